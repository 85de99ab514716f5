/**
 * What REDIS_URL names: one server, a Sentinel group, or a Redis Cluster. ioredis itself only
 * parses `redis://` / `rediss://`; Sentinel and Cluster take lists of nodes, written here the
 * way other Redis clients and services write them:
 *
 *   redis://[[user]:password@]host[:port][/db]                    one server (ioredis's own URL)
 *   redis+sentinel://[[user]:password@]host:port[,host:port…]/mastername[/db][?sentinelPassword=…]
 *   redis+cluster://[[user]:password@]host:port[,host:port…]      seed nodes (any of the cluster)
 *
 * `rediss` instead of `redis` (also `rediss+sentinel`, `rediss+cluster`) speaks TLS to the
 * Redis nodes (and, for Sentinel, to the sentinels). The user and password are those of the
 * Redis nodes (for Sentinel: of the master and replicas; the sentinels' own with
 * `?sentinelPassword=`).
 */
export type RedisTarget =
  | { kind: 'single'; url: string }
  | {
      kind: 'sentinel';
      sentinels: HostPort[];
      masterName: string;
      db: number;
      username?: string;
      password?: string;
      sentinelPassword?: string;
      tls: boolean;
    }
  | { kind: 'cluster'; nodes: HostPort[]; username?: string; password?: string; tls: boolean };

export interface HostPort {
  host: string;
  port: number;
}

export class RedisUrlError extends Error {}

const LIST_URL = /^(rediss?)\+(sentinel|cluster):\/\/(?:([^@/]*)@)?([^/?#]+)(\/[^?#]*)?(\?[^#]*)?$/;

export function parseRedisTarget(url: string): RedisTarget {
  const m0 = /^([a-z][a-z0-9+.-]*):\/\//i.exec(url);
  if (!m0) throw new RedisUrlError('is not a valid URL');
  const scheme = m0[1]!.toLowerCase();
  if (scheme === 'redis' || scheme === 'rediss') {
    try {
      new URL(url);
    } catch {
      throw new RedisUrlError('is not a valid URL');
    }
    return { kind: 'single', url };
  }
  const m = LIST_URL.exec(url);
  if (!m) {
    throw new RedisUrlError(
      'must be redis://host:port, redis+sentinel://host:port[,host:port…]/mastername or redis+cluster://host:port[,host:port…] (rediss… for TLS)',
    );
  }
  const [, base, kind, auth, hostList, path, query] = m as unknown as [
    string,
    string,
    'sentinel' | 'cluster',
    string | undefined,
    string,
    string | undefined,
    string | undefined,
  ];
  const tls = base === 'rediss';
  const credentials = parseAuth(auth);
  const defaultPort = kind === 'sentinel' ? 26379 : 6379;
  const hosts = hostList.split(',').map((h) => parseHostPort(h.trim(), defaultPort));
  const params = new URLSearchParams(query ?? '');
  if (kind === 'cluster') {
    if (path && path !== '/') throw new RedisUrlError('redis+cluster:// takes no path (a cluster has only database 0)');
    return { kind, nodes: hosts, ...credentials, tls };
  }
  const segments = (path ?? '').split('/').filter(Boolean);
  const masterName = segments[0] ? decodeURIComponent(segments[0]) : '';
  if (!masterName || segments.length > 2)
    throw new RedisUrlError('redis+sentinel:// needs the master name as its path: …/mastername[/db]');
  const db = segments[1] === undefined ? 0 : Number(segments[1]);
  if (!Number.isInteger(db) || db < 0)
    throw new RedisUrlError(`redis+sentinel:// database must be a number (got "${segments[1]}")`);
  const sentinelPassword = params.get('sentinelPassword') ?? undefined;
  return {
    kind,
    sentinels: hosts,
    masterName,
    db,
    ...credentials,
    ...(sentinelPassword ? { sentinelPassword } : {}),
    tls,
  };
}

function parseAuth(auth: string | undefined): { username?: string; password?: string } {
  if (!auth) return {};
  const colon = auth.indexOf(':');
  const username = decodeURIComponent(colon < 0 ? auth : auth.slice(0, colon));
  const password = colon < 0 ? '' : decodeURIComponent(auth.slice(colon + 1));
  // `redis+…://secret@host` is read as a password, as ioredis reads `redis://secret@host`'s
  // user part only with a colon.
  if (colon < 0) return username ? { password: username } : {};
  return { ...(username ? { username } : {}), ...(password ? { password } : {}) };
}

function parseHostPort(text: string, defaultPort: number): HostPort {
  const m = /^(\[[0-9a-fA-F:.]+\]|[^:[\]]+)(?::(\d+))?$/.exec(text);
  // The text is not quoted: a password with an unencoded '/' or '@' ends up here.
  if (!m)
    throw new RedisUrlError(
      "has an invalid host (host:port, IPv6 in brackets; percent-encode '/' and '@' in a password)",
    );
  const port = m[2] === undefined ? defaultPort : Number(m[2]);
  if (port < 1 || port > 65535) throw new RedisUrlError(`has an invalid port ${port} (1–65535)`);
  const host = m[1]!.startsWith('[') ? m[1]!.slice(1, -1) : m[1]!;
  return { host, port };
}

/** The target without secrets, for logs. */
export function describeRedisTarget(target: RedisTarget): string {
  const list = (hosts: HostPort[]) => hosts.map((h) => `${h.host}:${h.port}`).join(',');
  switch (target.kind) {
    case 'single': {
      const u = new URL(target.url);
      return `${u.protocol}//${u.host}`;
    }
    case 'sentinel':
      return `Sentinel ${list(target.sentinels)} master ${target.masterName}`;
    case 'cluster':
      return `Cluster ${list(target.nodes)}`;
  }
}
