import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { isIP } from 'node:net';
import type { ProxmoxTarget } from '../proxmox/index.js';
import { generateSelfSigned, pemFingerprint } from './cert.js';
import {
  clusterOptionsAnswer,
  lowestFreeVmid,
  noFreeVmidReason,
  validateNextIdRange,
  type NextIdRange,
} from './datacenter.js';
import {
  describeCertificate,
  describeMemberCertificate,
  isFingerprint,
  joinInfoAnswer,
  memberIp,
  randomFingerprint,
  type CertificateInfo,
} from './identity.js';
import { hasPrivilege, isGrantMap, permissionsAnswer, type SimPrivileges } from './permissions.js';
import { TaskLog, type SimTask } from './tasks.js';

/**
 * An HTTPS Proxmox VE API simulator: real paths, envelopes, status codes and reason
 * phrases, token checking with Proxmox-style ACL paths, standalone/cluster layouts with
 * per-member identities (optionally each member on its own port), offline nodes, guest
 * creation and deletion (recorded as tasks, also when done behind the API's back), the
 * datacenter's next-id range, fault injection and request statistics. For tests
 * (in-process) and for trying pvegraph without a Proxmox (`npm run sim`).
 */

export type GuestType = 'qemu' | 'lxc';

export interface SimToken {
  /** USER@REALM!TOKENID */
  id: string;
  secret: string;
  /**
   * 'all' (default): every privilege on `/`. 'none': authenticates (GET /version works) but
   * every permission check fails. A map `{ path: [privilege, …] }`: exactly these grants,
   * each propagating to the paths below it (`/vms` covers `/vms/100`).
   */
  privileges?: SimPrivileges;
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
  /**
   * The member this simulator serves as (`local: 1` in /cluster/status; its fingerprint is
   * the served certificate's). Default: the first node.
   */
  localNode?: string;
  /**
   * Fingerprints of members (by node name), e.g. to make two simulators look like members
   * of one cluster, or two clusters with equal names tell apart. Members left out get a
   * random one; the local member's must match the served certificate.
   */
  memberFingerprints?: Record<string, string>;
  /** `next-id` of datacenter.cfg (range of GET /cluster/nextid). Default: none (100 ≤ id < 1,000,000). */
  nextId?: NextIdRange;
  /**
   * In a cluster, also serve every other member on its own HTTPS port (same listen address,
   * random port) with its own self-signed certificate, sharing the cluster state. Default false.
   */
  memberEndpoints?: boolean;
}

/** A cluster member's own HTTPS endpoint. */
export interface SimMember {
  name: string;
  host: string;
  port: number;
  /** SHA-256 of the certificate this endpoint serves (= the member's ssl_fingerprint). */
  fingerprint: string;
  /** https://HOST:PORT */
  url: string;
}

export interface SimChurnOptions {
  /** One create or destroy per interval. */
  intervalMs: number;
  /** Never destroy below this many guests. Default 0. */
  minGuests?: number;
  /** Never create above this many guests. Default: no bound but the next-id range. */
  maxGuests?: number;
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
  addGuest(g: {
    vmid?: number;
    type?: GuestType;
    node?: string;
    name?: string;
    status?: 'running' | 'stopped';
    template?: boolean;
  }): SimGuest;
  removeGuest(vmid: number): boolean;
  setNodeOnline(node: string, online: boolean): void;
  addToken(token: SimToken): void;
  addFault(fault: SimFault): void;
  clearFaults(): void;
  faults(): SimFault[];
  /** Lowest free VMID in the next-id range, as GET /cluster/nextid computes it; throws when the range is full. */
  nextFreeVmid(): number;
  /** The member this simulator serves as on its primary port. */
  localNode: string;
  /** Every member's `ssl_fingerprint` by node name (the local member's is `fingerprint`). */
  memberFingerprints: Record<string, string>;
  /** The HTTPS endpoints: the primary first, then (with `memberEndpoints`) the other members. */
  members: SimMember[];
  /**
   * Makes a member's own endpoint refuse connections (its server stops listening and its
   * open connections are cut) or answer again on the same port. The node stays online for
   * the cluster: this is the client's network failing, not the node.
   */
  setMemberReachable(name: string, reachable: boolean): Promise<void>;
  /** Sets or clears (`null`) the datacenter's next-id range. */
  setNextIdRange(range: NextIdRange | null): void;
  nextIdRange(): NextIdRange | null;
  /** Recent tasks, newest first (GET /cluster/tasks as a Sys.Audit holder sees it). */
  tasks(): SimTask[];
  /** Creates or destroys one random guest per interval (recording tasks), until stopChurn() or stop(). */
  startChurn(opts: SimChurnOptions): void;
  stopChurn(): void;
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
  const localNode = opts.localNode ?? nodeNames[0] ?? 'pve';
  if (!online.has(localNode))
    throw new Error(`localNode '${localNode}' is not one of the nodes (${nodeNames.join(', ')})`);
  let nextIdRange: NextIdRange | null = null;
  if (opts.nextId) {
    validateNextIdRange(opts.nextId);
    nextIdRange = { ...opts.nextId };
  }
  const taskLog = new TaskLog();
  /** Who acts when a guest changes behind the API's back (the GUI, a shell). */
  const BACKDOOR_USER = 'root@pam';

  // ------------------------------------------------------------------ identities
  const cert =
    opts.certificate ?? (await generateSelfSigned(isIP(listenHost) ? 'pve.sim.invalid' : listenHost, [listenHost]));
  const fingerprint = pemFingerprint(cert.cert);
  /** Certificates the simulator serves, by member. */
  const servedCerts = new Map<string, { key: string; cert: string }>([[localNode, cert]]);
  if (opts.memberEndpoints && clusterName) {
    const others = nodeNames.filter((n) => n !== localNode);
    const generated = await Promise.all(others.map((n) => generateSelfSigned(`${n}.sim.invalid`, [listenHost])));
    others.forEach((n, i) => servedCerts.set(n, generated[i]!));
  }
  const memberFingerprints = assignMemberFingerprints(nodeNames, servedCerts, opts.memberFingerprints ?? {});
  /** Stand-ins for the cluster CA's id and the time the members' certificates were issued. */
  const clusterCaId = randomUUID();
  const issuedAt = Math.floor(Date.now() / 1000) - 86400;

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
  /** Lowest free VMID in the next-id range; HTTP 500 as GET /cluster/nextid answers when the range is full. */
  const allocateVmid = (): number => {
    const v = lowestFreeVmid((id) => guests.has(id), nextIdRange);
    if (v === null) throw new HttpError(500, noFreeVmidReason(nextIdRange));
    return v;
  };
  const nextFreeVmid = (): number => {
    try {
      return allocateVmid();
    } catch (e) {
      throw new Error((e as Error).message, { cause: e });
    }
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
    // Node refuses a status line outside Latin-1 (and the answer would never leave).
    res.writeHead(status, reason.replace(/[^\t\x20-\x7e\xa0-\xff]/g, '?'), {
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
          ssl_fingerprint: memberFingerprints[name],
        }
      : { id: `node/${name}`, type: 'node', node: name, status: 'offline' };
  /** GET /nodes reads the fingerprint from the cluster filesystem, so offline members carry it too. */
  const nodesEntry = (name: string, i: number): Record<string, unknown> =>
    online.get(name) ? nodeEntry(name, i) : { ...nodeEntry(name, i), ssl_fingerprint: memberFingerprints[name] };
  const auditableNodes = (token: SimToken): string[] =>
    nodeNames.filter((n) => hasPrivilege(token.privileges, `/nodes/${n}`, 'Sys.Audit'));

  const requireNode = (node: string) => {
    if (!online.has(node)) {
      throw new HttpError(
        500,
        `hostname lookup '${node}' failed - failed to get address info for: ${node}: Name or service not known`,
      );
    }
    if (!online.get(node)) throw new HttpError(595, 'No route to host');
  };
  const forbid = (token: SimToken, path: string, priv: string) => {
    if (!hasPrivilege(token.privileges, path, priv))
      throw new HttpError(403, `Permission check failed (${path}, ${priv})`);
  };
  const checkVmidParam = (raw: unknown): number => {
    if (raw === undefined || raw === null || raw === '') {
      throw new HttpError(400, 'Parameter verification failed.', {
        vmid: 'property is missing and it is not optional',
      });
    }
    // Form and JSON bodies carry numbers or strings; anything else fails the check below.
    const s = typeof raw === 'number' || typeof raw === 'string' ? String(raw).trim() : JSON.stringify(raw);
    if (!/^-?\d+$/.test(s)) {
      throw new HttpError(400, 'Parameter verification failed.', {
        vmid: `type check ('integer') failed - got '${s}'`,
      });
    }
    const n = Number.parseInt(s, 10);
    if (n < MIN_VMID)
      throw new HttpError(400, 'Parameter verification failed.', {
        vmid: `value must have a minimum value of ${MIN_VMID}`,
      });
    if (n > MAX_VMID)
      throw new HttpError(400, 'Parameter verification failed.', {
        vmid: `value must have a maximum value of ${MAX_VMID}`,
      });
    return n;
  };
  /** Guests the token may audit (VM.Audit on /vms/{vmid}), by VMID. */
  const visible = (token: SimToken): SimGuest[] => {
    const p = token.privileges;
    if (p === 'none') return [];
    const all = [...guests.values()].sort((a, b) => a.vmid - b.vmid);
    return isGrantMap(p) ? all.filter((g) => hasPrivilege(p, `/vms/${g.vmid}`, 'VM.Audit')) : all;
  };

  const createGuest = (g: Parameters<Simulator['addGuest']>[0]): SimGuest => {
    const vmid = g.vmid ?? allocateVmid();
    if (guests.has(vmid))
      throw new HttpError(400, 'Parameter verification failed.', { vmid: `VM ${vmid} already exists` });
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
  const createTaskType = (type: GuestType) => (type === 'lxc' ? 'vzcreate' : 'qmcreate');
  const destroyTaskType = (type: GuestType) => (type === 'lxc' ? 'vzdestroy' : 'qmdestroy');
  /** Creates a guest and records its create task, as every way of creating one does. */
  const createGuestWithTask = (
    g: Parameters<Simulator['addGuest']>[0],
    user: string,
  ): { guest: SimGuest; task: SimTask } => {
    const guest = createGuest(g);
    return { guest, task: taskLog.recordFinished(guest.node, createTaskType(guest.type), String(guest.vmid), user) };
  };
  const destroyGuestWithTask = (g: SimGuest, user: string): SimTask => {
    guests.delete(g.vmid);
    return taskLog.recordFinished(g.node, destroyTaskType(g.type), String(g.vmid), user);
  };

  /** A standalone node has no corosync.conf, so there is nothing to join. */
  const joinInfo = (preferred: string): Record<string, unknown> => {
    if (!clusterName) throw new HttpError(500, 'node is not in a cluster, no join info available!');
    if (!online.has(preferred)) throw new HttpError(500, `unknown node '${preferred}'`);
    const members = nodeNames.map((name, i) => ({
      name,
      nodeid: i + 1,
      ip: memberIp(i),
      fingerprint: memberFingerprints[name]!,
    }));
    return joinInfoAnswer(clusterName, members, preferred);
  };
  const certificateInfo = (node: string): CertificateInfo => {
    const served = servedCerts.get(node);
    if (served) return describeCertificate(served.cert);
    return describeMemberCertificate({
      node,
      fingerprint: memberFingerprints[node]!,
      ip: memberIp(nodeNames.indexOf(node)),
      caId: clusterCaId,
      issuedAt,
    });
  };
  /**
   * GET /access/permissions: the caller's own, or (with Sys.Audit on /access) another
   * token's; the simulator knows no users besides its tokens, so anyone else has none.
   */
  const permissionsFor = (token: SimToken, userid: string | null, path: string | null) => {
    let subject: SimToken | undefined = token;
    if (userid !== null && userid !== token.id) {
      forbid(token, '/access', 'Sys.Audit');
      subject = tokens.find((t) => t.id === userid);
    }
    if (!subject) return {};
    return permissionsAnswer(subject.privileges, path ?? undefined);
  };

  const route = async (
    method: string,
    path: string,
    query: URLSearchParams,
    token: SimToken,
    req: IncomingMessage,
    res: ServerResponse,
    /** The member this endpoint serves as. */
    local: string,
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
        ip: memberIp(i),
        local: name === local ? 1 : 0,
        online: online.get(name) ? 1 : 0,
        level: '',
      }));
      if (!clusterName)
        return ok(
          res,
          nodes.filter((n) => n.local === 1),
        );
      const up = nodeNames.filter((n) => online.get(n)).length;
      return ok(res, [
        {
          type: 'cluster',
          id: 'cluster',
          name: clusterName,
          nodes: nodeNames.length,
          quorate: up * 2 > nodeNames.length ? 1 : 0,
          version: nodeNames.length + 2,
        },
        ...nodes,
      ]);
    }
    if (method === 'GET' && sub === '/nodes') {
      const auditable = new Set(auditableNodes(token));
      return ok(
        res,
        nodeNames.map((n, i) => (auditable.has(n) ? nodesEntry(n, i) : null)).filter((e) => e !== null),
      );
    }
    if (method === 'GET' && sub === '/cluster/resources') {
      const type = query.get('type');
      const vms = type === null || type === 'vm' ? visible(token).map(resourceEntry) : [];
      const auditable = new Set(auditableNodes(token));
      const nodes =
        type === null || type === 'node'
          ? nodeNames.map((n, i) => (auditable.has(n) ? nodeEntry(n, i) : null)).filter((e) => e !== null)
          : [];
      if (type !== null && type !== 'vm' && type !== 'node' && type !== 'storage' && type !== 'sdn') {
        throw new HttpError(400, 'Parameter verification failed.', {
          type: `value '${type}' does not have a value in the enumeration 'vm, storage, node, sdn'`,
        });
      }
      return ok(res, [...nodes, ...vms]);
    }
    // Any valid token may ask (pve-manager: `permissions => { user => 'all' }`).
    if (method === 'GET' && sub === '/cluster/nextid') {
      if (query.has('vmid')) {
        const n = checkVmidParam(query.get('vmid'));
        if (guests.has(n))
          throw new HttpError(400, 'Parameter verification failed.', { vmid: `VM ${n} already exists` });
        return ok(res, String(n));
      }
      return ok(res, String(allocateVmid()));
    }
    if (method === 'GET' && sub === '/cluster/options') {
      forbid(token, '/', 'Sys.Audit');
      return ok(res, clusterOptionsAnswer(nextIdRange));
    }
    if (method === 'GET' && sub === '/cluster/config/join') {
      forbid(token, '/', 'Sys.Audit');
      return ok(res, joinInfo(query.get('node') ?? local));
    }
    if (method === 'GET' && sub === '/cluster/tasks') {
      // Sys.Audit on / shows the whole cluster's tasks; anyone else sees their own.
      const all = hasPrivilege(token.privileges, '/', 'Sys.Audit');
      return ok(
        res,
        taskLog.list().filter((t) => all || t.user === token.id),
      );
    }
    if (method === 'GET' && sub === '/access/permissions') {
      return ok(res, permissionsFor(token, query.get('userid'), query.get('path')));
    }
    if (method === 'GET' && (m = /^\/nodes\/([^/]+)\/certificates\/info$/.exec(sub))) {
      const node = decodeURIComponent(m[1] ?? '');
      requireNode(node);
      forbid(token, `/nodes/${node}`, 'Sys.Audit');
      return ok(res, [certificateInfo(node)]);
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
              : {
                  ...base,
                  cpus: 2,
                  ...(running ? { pid: 1000 + g.vmid } : {}),
                  ...(g.template ? { template: 1 } : {}),
                };
          });
        return ok(res, list);
      }
      if (method === 'POST') {
        requireNode(node);
        // 'none' is refused before the parameters are read; a grant map is checked on the VMID itself.
        if (!isGrantMap(token.privileges)) forbid(token, '/vms', 'VM.Allocate');
        const body = await readBody(req);
        const vmid = checkVmidParam(body['vmid']);
        forbid(token, `/vms/${vmid}`, 'VM.Allocate');
        const name = body[type === 'lxc' ? 'hostname' : 'name'];
        const { task } = createGuestWithTask(
          { vmid, type, node, ...(typeof name === 'string' && name ? { name } : {}) },
          token.id,
        );
        return ok(res, task.upid);
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
      return ok(res, destroyGuestWithTask(g, token.id).upid);
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
      if (method === 'GET')
        return ok(
          res,
          faults.map((f) => ({ ...f.fault, remaining: Number.isFinite(f.remaining) ? f.remaining : null })),
        );
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
    if (path === '/_sim/guests' && method === 'GET')
      return ok(
        res,
        [...guests.values()].sort((a, b) => a.vmid - b.vmid),
      );
    if (path === '/_sim/guests' && method === 'POST')
      return ok(res, { ...createGuestWithTask(backdoorGuestSpec(await readBody(req)), BACKDOOR_USER).guest });
    if ((m = /^\/_sim\/guests\/(\d+)$/.exec(path)) && method === 'DELETE') {
      const g = guests.get(Number(m[1]));
      if (!g) throw new HttpError(404, `no such guest ${m[1]}`);
      destroyGuestWithTask(g, BACKDOOR_USER);
      return ok(res, null);
    }
    if (path === '/_sim/tasks' && method === 'GET') return ok(res, taskLog.list());
    if (path === '/_sim/options/next-id' && method === 'POST') {
      const body = await readBody(req);
      try {
        setNextIdRange(nextIdRangeFromBody(body));
      } catch (e) {
        throw new HttpError(400, (e as Error).message);
      }
      return ok(res, clusterOptionsAnswer(nextIdRange));
    }
    if (path === '/_sim/churn') {
      if (method === 'DELETE') {
        stopChurn();
        return ok(res, null);
      }
      if (method === 'POST') {
        const body = await readBody(req);
        try {
          startChurn({
            intervalMs: Number(body['intervalMs']),
            ...(body['minGuests'] !== undefined ? { minGuests: Number(body['minGuests']) } : {}),
            ...(body['maxGuests'] !== undefined ? { maxGuests: Number(body['maxGuests']) } : {}),
          });
        } catch (e) {
          throw new HttpError(400, (e as Error).message);
        }
        return ok(res, null);
      }
    }
    if ((m = /^\/_sim\/members\/([^/]+)\/(reachable|unreachable)$/.exec(path)) && method === 'POST') {
      const name = decodeURIComponent(m[1] ?? '');
      if (!endpoints.has(name)) throw new HttpError(404, `no endpoint for member '${name}'`);
      await setMemberReachable(name, m[2] === 'reachable');
      return ok(res, null);
    }
    if ((m = /^\/_sim\/nodes\/([^/]+)\/(online|offline)$/.exec(path)) && method === 'POST') {
      const node = decodeURIComponent(m[1] ?? '');
      if (!online.has(node)) throw new HttpError(404, `no such node '${node}'`);
      online.set(node, m[2] === 'online');
      return ok(res, null);
    }
    throw new HttpError(404, 'no such control endpoint');
  };

  /** Body of POST /_sim/guests → a guest to create; bad fields answer 400. */
  const backdoorGuestSpec = (body: Record<string, unknown>): Parameters<Simulator['addGuest']>[0] => {
    const spec: Parameters<Simulator['addGuest']>[0] = {};
    if (body['vmid'] !== undefined) spec.vmid = checkVmidParam(body['vmid']);
    const type = body['type'];
    if (type !== undefined) {
      if (type !== 'qemu' && type !== 'lxc')
        throw new HttpError(400, 'Parameter verification failed.', { type: "value must be 'qemu' or 'lxc'" });
      spec.type = type;
    }
    const node = body['node'];
    if (node !== undefined) {
      if (typeof node !== 'string' || !online.has(node))
        throw new HttpError(400, 'Parameter verification failed.', {
          node: `no such node '${typeof node === 'string' ? node : JSON.stringify(node)}'`,
        });
      spec.node = node;
    }
    if (typeof body['name'] === 'string' && body['name']) spec.name = body['name'];
    if (body['status'] === 'running' || body['status'] === 'stopped') spec.status = body['status'];
    return spec;
  };

  // ------------------------------------------------------------------ datacenter options
  const setNextIdRange = (range: NextIdRange | null) => {
    if (range === null || (range.lower === undefined && range.upper === undefined)) {
      nextIdRange = null;
      return;
    }
    validateNextIdRange(range);
    nextIdRange = {
      ...(range.lower !== undefined ? { lower: range.lower } : {}),
      ...(range.upper !== undefined ? { upper: range.upper } : {}),
    };
  };

  // ------------------------------------------------------------------ churn (changes behind the API's back, for demos)
  let churnTimer: NodeJS.Timeout | null = null;
  const randomOf = <T>(xs: readonly T[]): T | undefined => xs[Math.floor(Math.random() * xs.length)];
  const churnStep = (minGuests: number, maxGuests: number) => {
    const count = guests.size;
    const create = count <= minGuests ? true : count >= maxGuests ? false : Math.random() < 0.5;
    const onlineNodes = nodeNames.filter((n) => online.get(n));
    if (create) {
      const node = randomOf(onlineNodes);
      if (!node) return;
      try {
        createGuestWithTask({ node, type: Math.random() < 0.5 ? 'qemu' : 'lxc' }, BACKDOOR_USER);
      } catch {
        // the next-id range is full: the next step may destroy one
      }
      return;
    }
    const victim = randomOf([...guests.values()].filter((g) => online.get(g.node)));
    if (victim) destroyGuestWithTask(victim, BACKDOOR_USER);
  };
  const stopChurn = () => {
    if (churnTimer) clearInterval(churnTimer);
    churnTimer = null;
  };
  const startChurn = (o: SimChurnOptions) => {
    const minGuests = o.minGuests ?? 0;
    const maxGuests = o.maxGuests ?? Infinity;
    if (!(Number.isFinite(o.intervalMs) && o.intervalMs >= 1)) throw new Error('intervalMs must be a number >= 1');
    if (!(Number.isInteger(minGuests) && minGuests >= 0)) throw new Error('minGuests must be an integer >= 0');
    if (!(maxGuests === Infinity || (Number.isInteger(maxGuests) && maxGuests >= minGuests)))
      throw new Error('maxGuests must be an integer >= minGuests');
    stopChurn();
    if (stopping) return;
    churnTimer = setInterval(() => churnStep(minGuests, maxGuests), o.intervalMs);
    // A demo's churn must never keep the process alive on its own.
    churnTimer.unref();
  };

  // ------------------------------------------------------------------ server
  const handle = async (req: IncomingMessage, res: ServerResponse, local: string) => {
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
            terminal.body !== undefined
              ? terminal.body
              : { data: null, message: `${terminal.reason ?? defaultReason(terminal.status)}\n` },
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
    await route(method, path, url.searchParams, token, req, res, local);
  };

  // ------------------------------------------------------------------ endpoints (the primary, then members' own)
  interface Endpoint {
    node: string;
    server: https.Server;
    /** Its open connections, cut when it becomes unreachable or the simulator stops. */
    sockets: Set<Socket>;
    port: number;
    /** False while setMemberReachable(node, false) holds its server closed. */
    listening: boolean;
  }
  const endpoints = new Map<string, Endpoint>();

  const listen = (server: https.Server, port: number) =>
    new Promise<number>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, listenHost, () => {
        server.off('error', reject);
        resolve((server.address() as AddressInfo).port);
      });
    });
  /** Closes a server and cuts its connections (hanging requests included). */
  const shut = (ep: Endpoint) => {
    const closed = new Promise<void>((resolve) => ep.server.close(() => resolve()));
    for (const s of ep.sockets) s.destroy();
    ep.server.closeAllConnections();
    return closed;
  };
  const openEndpoint = async (node: string, served: { key: string; cert: string }, port: number): Promise<Endpoint> => {
    const server = https.createServer({ key: served.key, cert: served.cert, keepAliveTimeout: 5_000 }, (req, res) => {
      handle(req, res, node).catch((e: unknown) => {
        if (e instanceof HttpError) return fail(res, e);
        send(res, 500, 'Internal Server Error', { data: null, message: `${(e as Error).message}\n` });
      });
    });
    const own = new Set<Socket>();
    server.on('connection', (s: Socket) => {
      own.add(s);
      s.on('close', () => own.delete(s));
    });
    server.on('secureConnection', () => {
      connections++;
    });
    server.on('tlsClientError', () => {
      // clients that reject our certificate close the handshake: not our problem
    });
    const ep: Endpoint = { node, server, sockets: own, port: await listen(server, port), listening: true };
    endpoints.set(node, ep);
    return ep;
  };
  const setMemberReachable = async (name: string, reachable: boolean) => {
    const ep = endpoints.get(name);
    if (!ep)
      throw new Error(`no endpoint for member '${name}' (members with endpoints: ${[...endpoints.keys()].join(', ')})`);
    if (stopping || ep.listening === reachable) return;
    ep.listening = reachable;
    if (reachable) await listen(ep.server, ep.port);
    else await shut(ep);
  };

  const urlHostPart = isIP(listenHost) === 6 ? `[${listenHost}]` : listenHost;
  const endpointUrl = (p: number) => `https://${urlHostPart}:${p}`;
  const primary = await openEndpoint(localNode, cert, opts.port ?? 0);
  try {
    for (const [node, served] of servedCerts) if (node !== localNode) await openEndpoint(node, served, 0);
  } catch (e) {
    await Promise.all([...endpoints.values()].map(shut));
    throw e;
  }
  const port = primary.port;
  const url = endpointUrl(port);
  const members: SimMember[] = [...endpoints.values()].map((ep) => ({
    name: ep.node,
    host: listenHost,
    port: ep.port,
    fingerprint: memberFingerprints[ep.node]!,
    url: endpointUrl(ep.port),
  }));
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
        return { ...createGuestWithTask(g, BACKDOOR_USER).guest };
      } catch (e) {
        throw new Error(
          e instanceof HttpError && e.errors ? Object.values(e.errors).join('; ') : (e as Error).message,
          { cause: e },
        );
      }
    },
    removeGuest: (vmid) => {
      const g = guests.get(vmid);
      if (!g) return false;
      destroyGuestWithTask(g, BACKDOOR_USER);
      return true;
    },
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
    localNode,
    memberFingerprints: { ...memberFingerprints },
    members,
    setMemberReachable,
    setNextIdRange,
    nextIdRange: () => (nextIdRange ? { ...nextIdRange } : null),
    tasks: () => taskLog.list(),
    startChurn,
    stopChurn,
    stop: async () => {
      if (stopping) return;
      stopping = true;
      stopChurn();
      for (const t of timers) clearTimeout(t);
      timers.clear();
      await Promise.all([...endpoints.values()].filter((ep) => ep.listening).map(shut));
    },
  };
  return sim;
}

/**
 * Every member's fingerprint: a served certificate's where the simulator serves one, else
 * the one asked for, else a random one (so two simulators never share a member identity
 * unless told to).
 */
function assignMemberFingerprints(
  nodeNames: readonly string[],
  servedCerts: ReadonlyMap<string, { cert: string }>,
  requested: Record<string, string>,
): Record<string, string> {
  for (const name of Object.keys(requested)) {
    if (!nodeNames.includes(name))
      throw new Error(`memberFingerprints: '${name}' is not one of the nodes (${nodeNames.join(', ')})`);
  }
  const out: Record<string, string> = {};
  for (const name of nodeNames) {
    const wanted = requested[name]?.toUpperCase();
    if (wanted !== undefined && !isFingerprint(wanted))
      throw new Error(`memberFingerprints: '${name}' needs an upper-case colon SHA-256 fingerprint`);
    const served = servedCerts.get(name);
    const servedFp = served ? pemFingerprint(served.cert) : undefined;
    if (servedFp && wanted && wanted !== servedFp) {
      throw new Error(
        `memberFingerprints: '${name}' is served by this simulator with certificate ${servedFp}; pass that certificate instead`,
      );
    }
    out[name] = servedFp ?? wanted ?? randomFingerprint();
  }
  return out;
}

/** `{lower?, upper?}` (numbers or numeric strings) or an empty/`null` body → a range or none. */
function nextIdRangeFromBody(body: Record<string, unknown>): NextIdRange | null {
  const num = (v: unknown, key: string): number | undefined => {
    if (v === undefined || v === null || v === '') return undefined;
    const n = Number(v);
    if (!Number.isInteger(n)) throw new Error(`${key} must be an integer`);
    return n;
  };
  const lower = num(body['lower'], 'lower');
  const upper = num(body['upper'], 'upper');
  if (lower === undefined && upper === undefined) return null;
  return { ...(lower !== undefined ? { lower } : {}), ...(upper !== undefined ? { upper } : {}) };
}

function validateFault(f: SimFault): void {
  if (!f || typeof f !== 'object') throw new Error('a fault must be an object');
  if (f.times !== undefined && (!Number.isInteger(f.times) || f.times < 1))
    throw new Error('times must be a positive integer');
  switch (f.kind) {
    case 'latency':
      if (!(typeof f.ms === 'number' && f.ms >= 0)) throw new Error('latency needs ms ≥ 0');
      return;
    case 'status':
      if (!(Number.isInteger(f.status) && f.status >= 100 && f.status <= 999))
        throw new Error('status needs an HTTP status 100..999');
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
      throw new Error(
        `unknown fault kind '${String((f as { kind?: unknown }).kind)}' (latency, status, malformed, reset, hang, oversize)`,
      );
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
