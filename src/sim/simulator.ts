import { randomBytes, randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { isIP } from 'node:net';
import type { ProxmoxTarget } from '../proxmox/index.js';
import { generateSelfSigned, pemFingerprint } from './cert.js';

/**
 * An HTTPS Proxmox VE API simulator: real paths, envelopes, status codes and reason
 * phrases, token checking, standalone/cluster layouts, offline nodes, guest creation and
 * deletion, fault injection and request statistics. For tests (in-process) and for
 * trying pvegraph without a Proxmox (`npm run sim`).
 */

export type GuestType = 'qemu' | 'lxc';

export interface SimToken {
  /** USER@REALM!TOKENID */
  id: string;
  secret: string;
  /** 'none': authenticates (GET /version works) but every permission check fails. */
  privileges?: 'all' | 'none';
}

export interface SimGuest {
  vmid: number;
  type: GuestType;
  node: string;
  name: string;
  status: 'running' | 'stopped';
  template: boolean;
}

interface FaultBase {
  /** Only requests whose path starts with this (with or without the /api2/json prefix). */
  pathPrefix?: string;
  /** How many matching requests the fault applies to; unlimited when omitted. */
  times?: number;
}
export type SimFault = FaultBase &
  (
    | { kind: 'latency'; ms: number }
    | { kind: 'status'; status: number; reason?: string; body?: unknown }
    | { kind: 'malformed' }
    | { kind: 'reset' }
    | { kind: 'hang' }
    | { kind: 'oversize'; bytes: number }
  );

export interface SimulatorOptions {
  /** Listen address. Default 127.0.0.1. */
  host?: string;
  /** 0 = random free port. Default 0. */
  port?: number;
  /** Number of generated guests. Default 10. */
  guests?: number;
  /** Cluster name; omitted/null = standalone node. */
  clusterName?: string | null;
  /** Number of nodes (default 1 standalone, 3 in a cluster). */
  nodes?: number;
  /** Explicit node names (overrides `nodes`). */
  nodeNames?: string[];
  /** Nodes that start offline. */
  offlineNodes?: string[];
  /** Skip one VMID after every N generated guests (0 = contiguous). */
  vmidGapEvery?: number;
  /** GET /nodes/{node}/lxc sends vmid as a string (PVE < 8.2). */
  stringLxcVmids?: boolean;
  /** GET /cluster/resources sends vmid as a string (not real; exercises client tolerance). */
  stringResourceVmids?: boolean;
  /** Delay before a 401 answer (the real one is ~3 s). Default 0. */
  authDelayMs?: number;
  /** Reason phrase of 401 answers. Default "authentication failure". */
  authFailureReason?: string;
  /** API tokens. Default: one full-access token `root@pam!pvegraph` with a random secret. */
  tokens?: SimToken[];
  /** GET /version answer. */
  version?: { version: string; release: string; repoid?: string };
  /** Certificate to serve instead of a fresh self-signed one. */
  certificate?: { key: string; cert: string };
  /** Serve the unauthenticated /_sim control endpoints. Default true. */
  controlEndpoints?: boolean;
}

export interface SimStats {
  /** Requests per path (without the query), e.g. `/api2/json/cluster/resources`. */
  readonly paths: ReadonlyMap<string, number>;
  /** All /api2 requests. */
  readonly total: number;
  /** TLS connections accepted. */
  readonly connections: number;
  /** Count for one path; the /api2/json prefix may be omitted. */
  count(path: string): number;
  reset(): void;
  snapshot(): { total: number; connections: number; paths: Record<string, number> };
}

export interface Simulator {
  /** https://HOST:PORT */
  url: string;
  /** https://HOST:PORT/api2/json */
  apiUrl: string;
  host: string;
  port: number;
  /** SHA-256 fingerprint of the served certificate, upper-case colon hex. */
  fingerprint: string;
  /** PEM of the served certificate. */
  certificate: string;
  tokens: SimToken[];
  /** The first token (full access unless configured otherwise). */
  token: SimToken;
  clusterName: string | null;
  nodeNames: string[];
  /** A ready-to-use target for ProxmoxClient (pinned to the served certificate). */
  target(overrides?: Partial<SimTarget>): SimTarget;
  stats: SimStats;
  guests(): SimGuest[];
  addGuest(g: { vmid?: number; type?: GuestType; node?: string; name?: string; status?: 'running' | 'stopped'; template?: boolean }): SimGuest;
  removeGuest(vmid: number): boolean;
  setNodeOnline(node: string, online: boolean): void;
  addToken(token: SimToken): void;
  addFault(fault: SimFault): void;
  clearFaults(): void;
  faults(): SimFault[];
  /** Lowest free VMID ≥ 100, as GET /cluster/nextid computes it. */
  nextFreeVmid(): number;
  stop(): Promise<void>;
}

/** What the project's Proxmox client needs to reach the simulator. */
export type SimTarget = ProxmoxTarget;

const API = '/api2/json';
const MIN_VMID = 100;
const MAX_VMID = 999_999_999;

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly reason: string,
    readonly errors?: Record<string, string>,
  ) {
    super(reason);
  }
}

function normalizePrefix(p: string | undefined): string {
  if (!p) return '';
  const withSlash = p.startsWith('/') ? p : `/${p}`;
  return withSlash.startsWith('/api2/') || withSlash.startsWith('/_sim') ? withSlash : `${API}${withSlash}`;
}

function defaultNodeNames(clusterName: string | null, n: number | undefined): string[] {
  if (!clusterName) {
    const count = n ?? 1;
    return count === 1 ? ['pve'] : Array.from({ length: count }, (_, i) => `pve${i + 1}`);
  }
  return Array.from({ length: n ?? 3 }, (_, i) => `pve${i + 1}`);
}

export async function startSimulator(opts: SimulatorOptions = {}): Promise<Simulator> {
  const listenHost = opts.host ?? '127.0.0.1';
  const clusterName = opts.clusterName ?? null;
  const nodeNames = opts.nodeNames?.length ? [...opts.nodeNames] : defaultNodeNames(clusterName, opts.nodes);
  const online = new Map<string, boolean>(nodeNames.map((n) => [n, !(opts.offlineNodes ?? []).includes(n)]));
  const tokens: SimToken[] = opts.tokens?.length
    ? opts.tokens.map((t) => ({ privileges: 'all', ...t }))
    : [{ id: 'root@pam!pvegraph', secret: randomUUID(), privileges: 'all' }];
  const versionInfo = opts.version ?? { version: '8.4.1', release: '8.4', repoid: '2a5fa54a8503f96d' };
  const authDelayMs = opts.authDelayMs ?? 0;
  const authReason = opts.authFailureReason ?? 'authentication failure';
  const controlEndpoints = opts.controlEndpoints ?? true;

  // ------------------------------------------------------------------ guests
  const guests = new Map<number, SimGuest>();
  {
    const n = Math.max(0, opts.guests ?? 10);
    const gap = Math.max(0, opts.vmidGapEvery ?? 0);
    let vmid = MIN_VMID;
    for (let i = 0; i < n; i++) {
      const type: GuestType = i % 3 === 2 ? 'lxc' : 'qemu';
      const template = type === 'qemu' && i % 10 === 9;
      guests.set(vmid, {
        vmid,
        type,
        node: nodeNames[i % nodeNames.length] ?? 'pve',
        name: `${type === 'qemu' ? 'vm' : 'ct'}-${vmid}`,
        status: template || i % 4 === 3 ? 'stopped' : 'running',
        template,
      });
      vmid += 1 + (gap > 0 && (i + 1) % gap === 0 ? 1 : 0);
    }
  }
  const nextFreeVmid = (): number => {
    let v = MIN_VMID;
    while (guests.has(v)) v++;
    return v;
  };

  // ------------------------------------------------------------------ stats & faults
  const pathCounts = new Map<string, number>();
  let total = 0;
  let connections = 0;
  const stats: SimStats = {
    get paths() {
      return pathCounts;
    },
    get total() {
      return total;
    },
    get connections() {
      return connections;
    },
    count(path: string) {
      const p = path.replace(/\?.*$/, '');
      return pathCounts.get(p.startsWith('/api2/') ? p : `${API}${p.startsWith('/') ? p : `/${p}`}`) ?? 0;
    },
    reset() {
      pathCounts.clear();
      total = 0;
      connections = 0;
    },
    snapshot() {
      return { total, connections, paths: Object.fromEntries(pathCounts) };
    },
  };

  interface ActiveFault {
    fault: SimFault;
    prefix: string;
    remaining: number;
  }
  let faults: ActiveFault[] = [];
  const addFault = (fault: SimFault) => {
    validateFault(fault);
    faults.push({ fault, prefix: normalizePrefix(fault.pathPrefix), remaining: fault.times ?? Infinity });
  };
  const takeFaults = (path: string): { latencyMs: number; terminal: SimFault | null } => {
    let latencyMs = 0;
    let terminal: SimFault | null = null;
    for (const f of faults) {
      if (f.remaining <= 0 || !path.startsWith(f.prefix)) continue;
      if (f.fault.kind === 'latency') {
        latencyMs += f.fault.ms;
        f.remaining--;
      } else if (!terminal) {
        terminal = f.fault;
        f.remaining--;
      }
    }
    faults = faults.filter((f) => f.remaining > 0);
    return { latencyMs, terminal };
  };

  // ------------------------------------------------------------------ bookkeeping for stop()
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let stopping = false;
  const delay = (ms: number) =>
    new Promise<void>((resolve) => {
      if (ms <= 0) return resolve();
      const t = setTimeout(() => {
        timers.delete(t);
        resolve();
      }, ms);
      timers.add(t);
    });

  // ------------------------------------------------------------------ responses
  const send = (res: ServerResponse, status: number, reason: string, body: unknown) => {
    if (res.headersSent || res.destroyed) return;
    const text = typeof body === 'string' ? body : JSON.stringify(body);
    res.writeHead(status, reason, {
      'content-type': 'application/json;charset=UTF-8',
      'content-length': Buffer.byteLength(text),
      'cache-control': 'max-age=0',
      pragma: 'no-cache',
      server: 'pve-api-daemon/3.0',
    });
    res.end(text);
  };
  const ok = (res: ServerResponse, data: unknown) => send(res, 200, 'OK', { data });
  const fail = (res: ServerResponse, e: HttpError) =>
    send(
      res,
      e.status,
      e.reason,
      e.errors ? { errors: e.errors, data: null } : { data: null, message: `${e.reason}\n` },
    );

  const upid = (node: string, kind: string, vmid: number, user: string) =>
    `UPID:${node}:${randomBytes(4).toString('hex').toUpperCase()}:${randomBytes(4).toString('hex').toUpperCase()}:${Math.floor(Date.now() / 1000).toString(16).toUpperCase()}:${kind}:${vmid}:${user}:`;

  // ------------------------------------------------------------------ API handlers
  const resourceEntry = (g: SimGuest, i: number): Record<string, unknown> => {
    const vmid = opts.stringResourceVmids ? String(g.vmid) : g.vmid;
    const id = `${g.type}/${g.vmid}`;
    if (!online.get(g.node)) return { id, node: g.node, status: 'unknown', type: g.type, vmid };
    const running = g.status === 'running';
    return {
      id,
      type: g.type,
      vmid,
      node: g.node,
      name: g.name,
      status: g.status,
      template: g.template ? 1 : 0,
      maxcpu: g.type === 'qemu' ? 2 : 1,
      cpu: running ? 0.01 + (i % 7) / 100 : 0,
      maxmem: 2147483648,
      mem: running ? 536870912 + (i % 5) * 1048576 : 0,
      maxdisk: 34359738368,
      disk: g.type === 'lxc' ? 1073741824 : 0,
      diskread: 0,
      diskwrite: 0,
      netin: running ? 12345 * (i + 1) : 0,
      netout: running ? 6789 * (i + 1) : 0,
      uptime: running ? 3600 + i : 0,
      tags: '',
    };
  };
  const nodeEntry = (name: string, i: number): Record<string, unknown> =>
    online.get(name)
      ? {
          id: `node/${name}`,
          type: 'node',
          node: name,
          status: 'online',
          cpu: 0.02,
          maxcpu: 16,
          mem: 8589934592,
          maxmem: 68719476736,
          disk: 10737418240,
          maxdisk: 107374182400,
          uptime: 86400 + i,
          level: '',
          ssl_fingerprint: fingerprint,
        }
      : { id: `node/${name}`, type: 'node', node: name, status: 'offline' };

  const requireNode = (node: string) => {
    if (!online.has(node)) {
      throw new HttpError(500, `hostname lookup '${node}' failed - failed to get address info for: ${node}: Name or service not known`);
    }
    if (!online.get(node)) throw new HttpError(595, 'No route to host');
  };
  const forbid = (token: SimToken, path: string, priv: string) => {
    if (token.privileges === 'none') throw new HttpError(403, `Permission check failed (${path}, ${priv})`);
  };
  const checkVmidParam = (raw: unknown): number => {
    if (raw === undefined || raw === null || raw === '') {
      throw new HttpError(400, 'Parameter verification failed.', { vmid: 'property is missing and it is not optional' });
    }
    const s = String(raw).trim();
    if (!/^-?\d+$/.test(s)) {
      throw new HttpError(400, 'Parameter verification failed.', { vmid: `type check ('integer') failed - got '${s}'` });
    }
    const n = Number.parseInt(s, 10);
    if (n < MIN_VMID) throw new HttpError(400, 'Parameter verification failed.', { vmid: `value must have a minimum value of ${MIN_VMID}` });
    if (n > MAX_VMID) throw new HttpError(400, 'Parameter verification failed.', { vmid: `value must have a maximum value of ${MAX_VMID}` });
    return n;
  };
  const visible = (token: SimToken) => (token.privileges === 'none' ? [] : [...guests.values()].sort((a, b) => a.vmid - b.vmid));

  const createGuest = (g: Parameters<Simulator['addGuest']>[0]): SimGuest => {
    const vmid = g.vmid ?? nextFreeVmid();
    if (guests.has(vmid)) throw new HttpError(400, 'Parameter verification failed.', { vmid: `VM ${vmid} already exists` });
    const type = g.type ?? 'lxc';
    const guest: SimGuest = {
      vmid,
      type,
      node: g.node ?? nodeNames[0] ?? 'pve',
      name: g.name ?? `${type === 'qemu' ? 'vm' : 'ct'}-${vmid}`,
      status: g.status ?? 'stopped',
      template: g.template ?? false,
    };
    guests.set(vmid, guest);
    return guest;
  };

  const route = async (
    method: string,
    path: string,
    query: URLSearchParams,
    token: SimToken,
    req: IncomingMessage,
    res: ServerResponse,
  ): Promise<void> => {
    const sub = path.slice(API.length) || '/';
    let m: RegExpExecArray | null;
    if (method === 'GET' && sub === '/version') return ok(res, { ...versionInfo });
    if (method === 'GET' && sub === '/cluster/status') {
      forbid(token, '/', 'Sys.Audit');
      const nodes = nodeNames.map((name, i) => ({
        type: 'node',
        id: `node/${name}`,
        name,
        nodeid: clusterName ? i + 1 : 0,
        ip: `192.0.2.${10 + i}`,
        local: i === 0 ? 1 : 0,
        online: online.get(name) ? 1 : 0,
        level: '',
      }));
      if (!clusterName) return ok(res, nodes.slice(0, 1));
      const up = nodeNames.filter((n) => online.get(n)).length;
      return ok(res, [
        { type: 'cluster', id: 'cluster', name: clusterName, nodes: nodeNames.length, quorate: up * 2 > nodeNames.length ? 1 : 0, version: nodeNames.length + 2 },
        ...nodes,
      ]);
    }
    if (method === 'GET' && sub === '/nodes') {
      return ok(res, token.privileges === 'none' ? [] : nodeNames.map(nodeEntry));
    }
    if (method === 'GET' && sub === '/cluster/resources') {
      const type = query.get('type');
      const vms = type === null || type === 'vm' ? visible(token).map(resourceEntry) : [];
      const nodes = type === null || type === 'node' ? (token.privileges === 'none' ? [] : nodeNames.map(nodeEntry)) : [];
      if (type !== null && type !== 'vm' && type !== 'node' && type !== 'storage' && type !== 'sdn') {
        throw new HttpError(400, 'Parameter verification failed.', { type: `value '${type}' does not have a value in the enumeration 'vm, storage, node, sdn'` });
      }
      return ok(res, [...nodes, ...vms]);
    }
    if (method === 'GET' && sub === '/cluster/nextid') {
      forbid(token, '/vms', 'VM.Allocate');
      if (query.has('vmid')) {
        const n = checkVmidParam(query.get('vmid'));
        if (guests.has(n)) throw new HttpError(400, 'Parameter verification failed.', { vmid: `VM ${n} already exists` });
        return ok(res, String(n));
      }
      return ok(res, String(nextFreeVmid()));
    }
    if ((m = /^\/nodes\/([^/]+)\/(qemu|lxc)$/.exec(sub))) {
      const node = decodeURIComponent(m[1] ?? '');
      const type = m[2] as GuestType;
      if (method === 'GET') {
        requireNode(node);
        const list = visible(token)
          .filter((g) => g.node === node && g.type === type)
          .map((g, i) => {
            const running = g.status === 'running';
            const base = {
              vmid: type === 'lxc' && opts.stringLxcVmids ? String(g.vmid) : g.vmid,
              name: g.name,
              status: g.status,
              maxmem: 2147483648,
              mem: running ? 536870912 : 0,
              maxdisk: 34359738368,
              disk: 0,
              cpu: running ? 0.01 : 0,
              uptime: running ? 3600 + i : 0,
              netin: 0,
              netout: 0,
            };
            return type === 'lxc'
              ? { ...base, type: 'lxc', cpus: 1, swap: 0, maxswap: 536870912, ...(g.template ? { template: 1 } : {}) }
              : { ...base, cpus: 2, ...(running ? { pid: 1000 + g.vmid } : {}), ...(g.template ? { template: 1 } : {}) };
          });
        return ok(res, list);
      }
      if (method === 'POST') {
        requireNode(node);
        forbid(token, '/vms', 'VM.Allocate');
        const body = await readBody(req);
        const vmid = checkVmidParam(body['vmid']);
        const name = body[type === 'lxc' ? 'hostname' : 'name'];
        const g = createGuest({ vmid, type, node, ...(typeof name === 'string' && name ? { name } : {}) });
        return ok(res, upid(node, type === 'lxc' ? 'vzcreate' : 'qmcreate', g.vmid, token.id));
      }
    }
    if ((m = /^\/nodes\/([^/]+)\/(qemu|lxc)\/(\d+)$/.exec(sub)) && method === 'DELETE') {
      const node = decodeURIComponent(m[1] ?? '');
      const type = m[2] as GuestType;
      const vmid = Number.parseInt(m[3] ?? '', 10);
      requireNode(node);
      forbid(token, `/vms/${vmid}`, 'VM.Allocate');
      const g = guests.get(vmid);
      if (!g || g.node !== node || g.type !== type) {
        const file = type === 'lxc' ? `nodes/${node}/lxc/${vmid}.conf` : `nodes/${node}/qemu-server/${vmid}.conf`;
        throw new HttpError(500, `Configuration file '${file}' does not exist`);
      }
      guests.delete(vmid);
      return ok(res, upid(node, type === 'lxc' ? 'vzdestroy' : 'qmdestroy', vmid, token.id));
    }
    throw new HttpError(501, `Method '${method} ${path}' not implemented`);
  };

  const authenticate = (header: string | undefined): SimToken | null => {
    if (!header) return null;
    const m = /^PVEAPIToken[= ](.+)$/.exec(header.trim());
    if (!m?.[1]) return null;
    const cred = m[1];
    const eq = cred.indexOf('=');
    if (eq <= 0) return null;
    const id = cred.slice(0, eq);
    const secret = cred.slice(eq + 1);
    return tokens.find((t) => t.id === id && t.secret === secret) ?? null;
  };

  // ------------------------------------------------------------------ control endpoints (/_sim)
  const control = async (method: string, path: string, req: IncomingMessage, res: ServerResponse) => {
    let m: RegExpExecArray | null;
    if (path === '/_sim/stats' && method === 'GET') return ok(res, stats.snapshot());
    if (path === '/_sim/stats/reset' && method === 'POST') {
      stats.reset();
      return ok(res, null);
    }
    if (path === '/_sim/faults') {
      if (method === 'GET') return ok(res, faults.map((f) => ({ ...f.fault, remaining: Number.isFinite(f.remaining) ? f.remaining : null })));
      if (method === 'DELETE') {
        faults = [];
        return ok(res, null);
      }
      if (method === 'POST') {
        const body = await readBody(req);
        try {
          addFault(body as unknown as SimFault);
        } catch (e) {
          throw new HttpError(400, (e as Error).message);
        }
        return ok(res, null);
      }
    }
    if (path === '/_sim/guests' && method === 'GET') return ok(res, [...guests.values()].sort((a, b) => a.vmid - b.vmid));
    if ((m = /^\/_sim\/nodes\/([^/]+)\/(online|offline)$/.exec(path)) && method === 'POST') {
      const node = decodeURIComponent(m[1] ?? '');
      if (!online.has(node)) throw new HttpError(404, `no such node '${node}'`);
      online.set(node, m[2] === 'online');
      return ok(res, null);
    }
    throw new HttpError(404, 'no such control endpoint');
  };

  // ------------------------------------------------------------------ server
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'https://sim.invalid');
    const path = url.pathname;
    const method = (req.method ?? 'GET').toUpperCase();
    if (path.startsWith('/_sim/') && controlEndpoints) return control(method, path, req, res);
    if (!path.startsWith('/api2/')) throw new HttpError(501, `Method '${method} ${path}' not implemented`);

    total++;
    pathCounts.set(path, (pathCounts.get(path) ?? 0) + 1);

    const { latencyMs, terminal } = takeFaults(path);
    if (latencyMs > 0) await delay(latencyMs);
    if (stopping || res.destroyed) return;
    if (terminal) {
      switch (terminal.kind) {
        case 'hang':
          return; // never answer; stop() destroys the socket
        case 'reset':
          req.socket.destroy();
          return;
        case 'malformed':
          return send(res, 200, 'OK', '{"data":[{"id":"qemu/100","vmid":100,"node":');
        case 'oversize': {
          // Chunked (no content-length), so the client has to count what it reads.
          res.writeHead(200, 'OK', { 'content-type': 'application/json;charset=UTF-8' });
          res.write('{"data":[],"filler":"');
          const chunk = 'x'.repeat(64 * 1024);
          let left = Math.max(0, terminal.bytes);
          const pump = (): void => {
            while (left > 0 && !res.destroyed) {
              const part = left >= chunk.length ? chunk : chunk.slice(0, left);
              left -= part.length;
              if (!res.write(part)) {
                res.once('drain', pump);
                return;
              }
            }
            if (!res.destroyed) res.end('"}');
          };
          pump();
          return;
        }
        case 'status':
          return send(
            res,
            terminal.status,
            terminal.reason ?? defaultReason(terminal.status),
            terminal.body !== undefined ? terminal.body : { data: null, message: `${terminal.reason ?? defaultReason(terminal.status)}\n` },
          );
        default:
          break;
      }
    }

    if (!path.startsWith(API)) throw new HttpError(501, `Method '${method} ${path}' not implemented`);
    const token = authenticate(req.headers.authorization);
    if (!token) {
      await delay(authDelayMs);
      if (stopping) return;
      throw new HttpError(401, authReason);
    }
    await route(method, path, url.searchParams, token, req, res);
  };

  const cert = opts.certificate ?? (await generateSelfSigned(isIP(listenHost) ? 'pve.sim.invalid' : listenHost, [listenHost]));
  const fingerprint = pemFingerprint(cert.cert);

  const server = https.createServer({ key: cert.key, cert: cert.cert, keepAliveTimeout: 5_000 }, (req, res) => {
    handle(req, res).catch((e: unknown) => {
      if (e instanceof HttpError) return fail(res, e);
      send(res, 500, 'Internal Server Error', { data: null, message: `${(e as Error).message}\n` });
    });
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.on('secureConnection', () => {
    connections++;
  });
  server.on('tlsClientError', () => {
    // clients that reject our certificate close the handshake: not our problem
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, listenHost, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  const urlHostPart = isIP(listenHost) === 6 ? `[${listenHost}]` : listenHost;
  const url = `https://${urlHostPart}:${port}`;
  const firstToken = tokens[0]!;

  const sim: Simulator = {
    url,
    apiUrl: `${url}${API}`,
    host: listenHost,
    port,
    fingerprint,
    certificate: cert.cert,
    tokens,
    token: firstToken,
    clusterName,
    nodeNames,
    target: (overrides = {}) => ({
      host: listenHost,
      port,
      tokenId: firstToken.id,
      tokenSecret: firstToken.secret,
      tlsFingerprint: fingerprint,
      ...overrides,
    }),
    stats,
    guests: () => [...guests.values()].sort((a, b) => a.vmid - b.vmid).map((g) => ({ ...g })),
    addGuest: (g) => {
      if (g.node !== undefined && !online.has(g.node)) throw new Error(`no such node '${g.node}'`);
      try {
        return { ...createGuest(g) };
      } catch (e) {
        throw new Error(e instanceof HttpError && e.errors ? Object.values(e.errors).join('; ') : (e as Error).message);
      }
    },
    removeGuest: (vmid) => guests.delete(vmid),
    setNodeOnline: (node, isOnline) => {
      if (!online.has(node)) throw new Error(`no such node '${node}'`);
      online.set(node, isOnline);
    },
    addToken: (t) => {
      tokens.push({ privileges: 'all', ...t });
    },
    addFault,
    clearFaults: () => {
      faults = [];
    },
    faults: () => faults.map((f) => f.fault),
    nextFreeVmid,
    stop: async () => {
      if (stopping) return;
      stopping = true;
      for (const t of timers) clearTimeout(t);
      timers.clear();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sockets) s.destroy();
      server.closeAllConnections();
      await closed;
    },
  };
  return sim;
}

function validateFault(f: SimFault): void {
  if (!f || typeof f !== 'object') throw new Error('a fault must be an object');
  if (f.times !== undefined && (!Number.isInteger(f.times) || f.times < 1)) throw new Error('times must be a positive integer');
  switch (f.kind) {
    case 'latency':
      if (!(typeof f.ms === 'number' && f.ms >= 0)) throw new Error('latency needs ms ≥ 0');
      return;
    case 'status':
      if (!(Number.isInteger(f.status) && f.status >= 100 && f.status <= 999)) throw new Error('status needs an HTTP status 100..999');
      if (f.reason !== undefined && /[\r\n]/.test(f.reason)) throw new Error('reason must be one line');
      return;
    case 'oversize':
      if (!(Number.isInteger(f.bytes) && f.bytes >= 0)) throw new Error('oversize needs bytes ≥ 0');
      return;
    case 'malformed':
    case 'reset':
    case 'hang':
      return;
    default:
      throw new Error(`unknown fault kind '${(f as { kind?: unknown }).kind}' (latency, status, malformed, reset, hang, oversize)`);
  }
}

function defaultReason(status: number): string {
  switch (status) {
    case 400:
      return 'Parameter verification failed.';
    case 401:
      return 'authentication failure';
    case 403:
      return 'Permission check failed';
    case 500:
      return 'Internal Server Error';
    case 502:
      return 'Bad Gateway';
    case 503:
      return 'Service Unavailable';
    case 504:
      return 'Gateway Timeout';
    case 595:
      return 'Connection refused';
    case 596:
      return 'Connection timed out';
    default:
      return status >= 500 ? 'Server Error' : status >= 400 ? 'Client Error' : 'OK';
  }
}

async function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req) {
    const b = c as Buffer;
    size += b.length;
    if (size > 1024 * 1024) throw new HttpError(413, 'request entity too large');
    chunks.push(b);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (!text.trim()) return {};
  const ct = (req.headers['content-type'] ?? '').toLowerCase();
  if (ct.includes('json') || text.trim().startsWith('{')) {
    try {
      const v: unknown = JSON.parse(text);
      return v && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
    } catch {
      throw new HttpError(400, 'malformed JSON body');
    }
  }
  return Object.fromEntries(new URLSearchParams(text));
}
