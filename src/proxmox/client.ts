import { setTimeout as sleep } from 'node:timers/promises';
import { errors, Pool } from 'undici';
import type { Dispatcher } from 'undici';
import type { z } from 'zod';
import { type LRUCache, lruCache } from '../cache/lru.js';
import { missingPrivileges, normalizeAclPath, requiredPaths, type PermissionMap } from './privileges.js';
import { BadUserInputError, ConflictError, DomainError, ErrorCode } from '../errors.js';
import {
  ProxmoxApiError,
  ProxmoxAuthFailedError,
  ProxmoxForbiddenError,
  ProxmoxTimeoutError,
  ProxmoxUnreachableError,
} from './errors.js';
import { assertLiteralAllowed, bareHost, urlHost, type HostPolicy } from './host-policy.js';
import {
  clusterStatusSchema,
  envelopeSchema,
  errorBodySchema,
  clusterOptionsSchema,
  nextIdSchema,
  nodeGuestsSchema,
  nodeListSchema,
  permissionsSchema,
  plainInt,
  plainResources,
  resourcesSchema,
  tasksSchema,
  versionSchema,
} from './schemas.js';
import { makeConnector, networkError, normalizeFingerprint, type TlsMode } from './tls.js';

export interface ProxmoxTarget {
  host: string;
  port: number;
  /** USER@REALM!TOKENID */
  tokenId: string;
  tokenSecret: string;
  /** Pinned SHA-256 fingerprint (any case, with or without colons). Wins over allowInsecureTls. */
  tlsFingerprint?: string | null;
  /** Applies to the primary and to every fallback endpoint (as does the token). */
  allowInsecureTls?: boolean;
  /**
   * Further endpoints of the same registration, in order, tried after the primary (host/port/
   * tlsFingerprint above) when an endpoint is unreachable (network error, timeout, 5xx). Each
   * has its own pin (none: allowInsecureTls or the CA store decide, as for the primary).
   */
  fallbacks?: readonly ProxmoxEndpoint[];
  /**
   * Told the outcome of every attempt on an endpoint (index 0 = primary, i = fallbacks[i-1]):
   * ok when the endpoint answered over HTTP with anything but a 5xx or 401 (a 403 or 400 is the
   * request's problem, not the endpoint's); otherwise the error message (network, timeout, TLS,
   * 401, 5xx). Must be cheap and must not throw; never receives the secret.
   */
  onEndpointResult?: (result: EndpointResult) => void;
}

export interface ProxmoxEndpoint {
  host: string;
  port: number;
  tlsFingerprint?: string | null;
}

export interface EndpointResult {
  /** 0 = the primary, i ≥ 1 = fallbacks[i - 1]. */
  index: number;
  host: string;
  port: number;
  ok: boolean;
  /** null when ok. */
  error: string | null;
  /** The error code when not ok. */
  code: string | null;
}

/** Minimal logger interface (pino-compatible). Never receives secrets. */
export interface ProxmoxLogger {
  debug?(obj: object, msg?: string): void;
  warn?(obj: object, msg?: string): void;
}

export interface ProxmoxClientOptions {
  /** Whole-request bound (DNS + connect + TLS + headers + body, retries included). */
  timeoutMs: number;
  allowPrivateHosts: boolean;
  allowLoopbackHosts: boolean;
  /** See HostPolicy.loopbackEndpoints. */
  loopbackEndpoints?: readonly string[];
  /** Default 16 MiB. */
  maxResponseBytes?: number;
  /** Extra attempts for idempotent GETs after network errors and transient 5xx. Default 2. */
  retries?: number;
  logger?: ProxmoxLogger;
  /** Distinct (host, port, TLS mode) connection pools kept open. Default 64. */
  maxPools?: number;
  /**
   * Sockets per pool. Default 16: a batch of reservations (up to 16, VmidReservations) asks
   * Proxmox to confirm each VMID at once, and requests queued behind a busy socket cost more
   * CPU on both ends than requests sent together (measured in `npm run bench -- 5`: about
   * 25 µs per reservation in the servers). One request per socket at a time: pveproxy answers a
   * pipelined request before an earlier one it forwarded (to pvedaemon or another member).
   */
  connectionsPerNode?: number;
  /** Extra CA certificates (PEM) trusted in verify mode, on top of the system CAs. */
  caCerts?: readonly string[];
  /** Told about every finished call (metrics): path without query, outcome 'ok' or an error code. */
  onCall?: (call: ProxmoxCall) => void;
  /**
   * After a call succeeded through a fallback endpoint, the next calls of the same target start
   * there for this long (the primary is tried first again afterwards). 0: always start at the
   * primary. Default 30 s.
   */
  preferWorkingEndpointMs?: number;
}

export interface ProxmoxCall {
  path: string;
  outcome: string;
  durationMs: number;
}

export interface ProxmoxVersion {
  version: string;
  release: string;
  repoid?: string;
}

export interface ProxmoxClusterStatus {
  /** null for a standalone node */
  clusterName: string | null;
  nodeNames: string[];
  /** Every member, by name (what a UI offers as fallback endpoints). */
  members: ClusterMember[];
}

/**
 * What tells one Proxmox cluster (or standalone host) from every other: the SHA-256
 * fingerprints of its members' `pve-ssl.pem` certificates. Each is made from a key generated
 * at install time, so they differ between installations even when every name is the default
 * (`pve`, `pve1`, a cluster called "cluster"). Proxmox reports them for every member, online
 * or not, in `GET /nodes` (`ssl_fingerprint`).
 */
export interface ClusterIdentity {
  /** null for a standalone host. */
  clusterName: string | null;
  /** Upper-case colon hex, sorted, once each; never empty. */
  memberFingerprints: string[];
}

export interface ClusterMember {
  name: string;
  /** The address the cluster knows the member by (corosync's), when reported. */
  address: string | null;
  online: boolean;
}

export interface ProxmoxGuest {
  vmid: number;
  type: 'qemu' | 'lxc';
  node: string;
  status: string;
  name?: string;
  template?: boolean;
}

/** One task of GET /cluster/tasks (recent tasks of the whole cluster, or only the token's own). */
export interface ProxmoxTask {
  /** `UPID:node:PID:PSTART:STARTTIME:type:id:user:` — unique per task. */
  upid: string;
  node: string;
  /** e.g. qmcreate, vzdestroy, qmigrate, vzdump ('' when unknown). */
  type: string;
  /** The VMID (as a string) for guest tasks. */
  id: string;
  user: string;
  /** Epoch seconds. */
  starttime: number;
  /** Set once the task finished ('OK' or an error message). */
  status?: string;
  /** Epoch seconds, once finished. */
  endtime?: number;
}

export interface ConnectionTestResult {
  ok: boolean;
  latencyMs: number;
  version: string | null;
  release: string | null;
  fingerprint: string | null;
  clusterName: string | null;
  pveNodeNames: string[];
  members: ClusterMember[];
  /** What tells this cluster from every other; null when the token cannot read it. */
  identity: ClusterIdentity | null;
  /**
   * Privileges pvegraph needs (src/proxmox/privileges.ts) that the token lacks, as
   * "Privilege@path", from /access/permissions. Empty when all are there, when Proxmox could not
   * say (the call failed, e.g. an older Proxmox), and on a failed test — except a refusal (403)
   * after the token authenticated, where it says what the token is missing.
   */
  missingPrivileges: string[];
  errorCode: string | null;
  message: string | null;
}

/** Privileges per ACL path: privilege → whether it propagates to sub-paths. */
export type ProxmoxPermissions = Map<string, Map<string, boolean>>;

export const DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024;
const MIN_VMID = 100;
const MAX_VMID = 999_999_999;
/** 5xx statuses worth another try on an idempotent GET (596 = TLS failure between nodes: no). */
const RETRY_STATUSES = new Set([500, 502, 503, 504, 595]);
const BACKOFF_MS = [100, 300, 900];

interface PoolEntry {
  key: string;
  pool: Pool;
  /** Fingerprint of the last certificate this pool's host presented. */
  fingerprint: string | null;
}

/**
 * One endpoint of a target as its requests use it, made once per target (see prepared()):
 * checked against the input rules and the host policy, with its TLS mode and pool key.
 */
interface PreparedEndpoint {
  /** 0 = the primary, i ≥ 1 = fallbacks[i - 1]. */
  index: number;
  /** host, port and tlsFingerprint as given (reported to onEndpointResult, compared by prepared()). */
  given: ProxmoxEndpoint;
  /** bareHost(given.host). */
  host: string;
  port: number;
  tls: TlsMode;
  poolKey: string;
}

/** What a target's requests need, computed once per target object and the values it was made from. */
interface PreparedTarget {
  /** The target's fields this was made from: a target changed in place is prepared again. */
  host: string;
  port: number;
  tokenId: string;
  tokenSecret: string;
  tlsFingerprint: string | null | undefined;
  allowInsecureTls: boolean | undefined;
  /** The primary, then the fallbacks in order. */
  endpoints: PreparedEndpoint[];
  /** Key of the endpoint list for preferWorkingEndpointMs ('' for one endpoint). */
  stickyKey: string;
  authorization: string;
}

interface RawResponse {
  status: number;
  statusText: string;
  text: string;
}

function isDomain(err: unknown): err is DomainError {
  return err instanceof DomainError;
}

function tlsModeOf(
  t: Pick<ProxmoxTarget, 'tlsFingerprint' | 'allowInsecureTls'>,
  caCerts: readonly string[] | undefined,
): TlsMode {
  if (t.tlsFingerprint != null && t.tlsFingerprint.trim() !== '') {
    const fp = normalizeFingerprint(t.tlsFingerprint);
    if (!fp) {
      throw new BadUserInputError('The TLS fingerprint must be a SHA-256 fingerprint (32 hex bytes).', {
        tlsFingerprint: 'not a SHA-256 fingerprint',
      });
    }
    return { kind: 'pinned', fingerprint: fp };
  }
  if (t.allowInsecureTls) return { kind: 'insecure' };
  return caCerts && caCerts.length > 0 ? { kind: 'verify', ca: caCerts } : { kind: 'verify' };
}

function modeKey(m: TlsMode): string {
  return m.kind === 'pinned' ? `pin:${m.fingerprint}` : m.kind;
}

/** Removes the secret from the message and string extensions of an error. */
function redact<E>(err: E, secret: string): E {
  if (!secret || secret.length < 4 || !(err instanceof Error)) return err;
  const scrub = (s: string) => s.split(secret).join('***');
  if (err.message.includes(secret)) err.message = scrub(err.message);
  const ext = (err as { extensions?: Record<string, unknown> }).extensions;
  if (ext) {
    for (const [k, v] of Object.entries(ext)) {
      if (typeof v === 'string' && v.includes(secret)) ext[k] = scrub(v);
    }
  }
  return err;
}

/** Maps an error thrown by undici into a DomainError (`host` bare, as bareHost gives it). */
function mapTransportError(err: unknown, host: string, port: number, timeoutMs: number): Error {
  if (isDomain(err)) return err;
  const code = (err as { code?: string } | undefined)?.code ?? '';
  if (
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'UND_ERR_HEADERS_TIMEOUT' ||
    code === 'UND_ERR_BODY_TIMEOUT' ||
    code === 'UND_ERR_ABORTED' ||
    (err as Error | undefined)?.name === 'AbortError'
  ) {
    return new ProxmoxTimeoutError(timeoutMs);
  }
  if (code === 'UND_ERR_SOCKET') {
    return new ProxmoxUnreachableError(`Connection to Proxmox at ${host}:${port} was closed unexpectedly.`, {
      host,
      port,
      cause: 'ECONNRESET',
    });
  }
  if (code === 'UND_ERR_CLOSED' || code === 'UND_ERR_DESTROYED') {
    return new ProxmoxUnreachableError('The Proxmox client was closed.', { cause: code });
  }
  return networkError(err, host, port);
}

/**
 * Worth passing the request to the next endpoint: this endpoint could not be reached, did not
 * answer in time, or failed itself (5xx, 595/596 included). Never a refusal: 401, 403, other
 * 4xx, an untrusted certificate or a pin mismatch, a host the policy refuses answer at once.
 */
function isFailover(err: unknown): boolean {
  if (err instanceof ProxmoxUnreachableError || err instanceof ProxmoxTimeoutError) return true;
  if (err instanceof ProxmoxApiError) return err.status !== null && err.status >= 500 && err.status <= 599;
  return false;
}

/** Whether an attempt's error counts against the endpoint (vs. the request: 403, 400, …). */
function endpointFailed(err: Error): boolean {
  if (isFailover(err)) return true;
  if (!(err instanceof DomainError)) return true;
  return (
    err.code === ErrorCode.PROXMOX_AUTH_FAILED ||
    err.code === ErrorCode.PROXMOX_TLS_UNTRUSTED ||
    err.code === ErrorCode.PROXMOX_TLS_FINGERPRINT_MISMATCH ||
    err.code === ErrorCode.HOST_NOT_ALLOWED
  );
}

/** The primary (from the target itself), then the fallbacks in order. */
function endpointsOf(t: ProxmoxTarget): ProxmoxEndpoint[] {
  const primary: ProxmoxEndpoint = { host: t.host, port: t.port, tlsFingerprint: t.tlsFingerprint ?? null };
  return t.fallbacks && t.fallbacks.length > 0 ? [primary, ...t.fallbacks] : [primary];
}

function endpointsKey(endpoints: readonly ProxmoxEndpoint[]): string {
  return endpoints.map((e) => `${bareHost(e.host).toLowerCase()}|${e.port}|${e.tlsFingerprint ?? ''}`).join(',');
}

function poolKeyOf(host: string, port: number, mode: TlsMode): string {
  return `${host.toLowerCase()}|${port}|${modeKey(mode)}`;
}

/** Whether `p` was made from the values `t` holds now. */
function preparedFrom(p: PreparedTarget, t: ProxmoxTarget): boolean {
  if (
    p.host !== t.host ||
    p.port !== t.port ||
    p.tokenId !== t.tokenId ||
    p.tokenSecret !== t.tokenSecret ||
    p.tlsFingerprint !== t.tlsFingerprint ||
    p.allowInsecureTls !== t.allowInsecureTls
  ) {
    return false;
  }
  const fallbacks = t.fallbacks;
  const n = fallbacks?.length ?? 0;
  if (n !== p.endpoints.length - 1) return false;
  for (let i = 0; i < n; i++) {
    const e = fallbacks![i]!;
    const given = p.endpoints[i + 1]!.given;
    if (e.host !== given.host || e.port !== given.port || e.tlsFingerprint !== given.tlsFingerprint) return false;
  }
  return true;
}

const ONLY_PRIMARY: readonly number[] = Object.freeze([0]);

/** The order of a round over `n` endpoints: `start`, then the others in order; the dead left out. */
function roundOrder(start: number, n: number, dead: readonly boolean[] | undefined): readonly number[] {
  if (n === 1) return dead?.[0] ? [] : ONLY_PRIMARY;
  const order: number[] = [];
  if (!dead?.[start]) order.push(start);
  for (let i = 0; i < n; i++) if (i !== start && !dead?.[i]) order.push(i);
  return order;
}

/** `path` without its query, as reported to onCall. */
function pathOf(path: string): string {
  const q = path.indexOf('?');
  return q === -1 ? path : path.slice(0, q);
}

/**
 * An attempt's share of the time left while other endpoints are left in its round: aborted
 * with the request or when the share is used up.
 */
interface Share {
  signal: AbortSignal;
  /** Rejects when `signal` aborts. */
  abandoned: Promise<never>;
  /** Whether the share (not the request) ran out. */
  expired(): boolean;
  dispose(): void;
}

function shareOf(request: AbortSignal, shareMs: number): Share {
  const ac = new AbortController();
  const signal = AbortSignal.any([request, ac.signal]);
  const timer = setTimeout(() => ac.abort(), shareMs);
  let onAbort: (() => void) | undefined;
  const abandoned = new Promise<never>((_, reject) => {
    onAbort = () => reject(new Error('attempt aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  abandoned.catch(() => undefined);
  return {
    signal,
    abandoned,
    expired: () => ac.signal.aborted,
    dispose: () => {
      clearTimeout(timer);
      if (onAbort) signal.removeEventListener('abort', onAbort);
    },
  };
}

function isRetryable(err: unknown): boolean {
  if (err instanceof ProxmoxUnreachableError) {
    // DNS answers are not retried (a missing name stays missing within a request).
    const cause = err.extensions['cause'];
    return cause !== 'ENOTFOUND';
  }
  if (err instanceof ProxmoxApiError) return err.status !== null && RETRY_STATUSES.has(err.status);
  return false;
}

/** Proxmox's default `next-id` range: 100 ≤ id < 1,000,000. */
const DEFAULT_NEXT_ID_LOWER = 100;
const DEFAULT_NEXT_ID_UPPER = 1_000_000;

/** VMIDs from `lower` (inclusive) to `upper` (exclusive). */
export interface VmidRange {
  lower: number;
  upper: number;
}

/**
 * envelopeSchema's answer (`{ data }`), or undefined where it fails. The usual answer, an
 * object with `data` set, is read by hand; anything else goes to zod, which decides.
 */
function envelopeData(json: unknown): { data: unknown } | undefined {
  if (typeof json === 'object' && json !== null && !Array.isArray(json)) {
    const data = (json as { data?: unknown }).data;
    if (data !== undefined) return { data };
  }
  const env = envelopeSchema.safeParse(json);
  return env.success ? { data: env.data.data } : undefined;
}

/** A SHA-256 fingerprint as Proxmox writes it (upper-case, colon-separated). */
const SHA256_FINGERPRINT = /^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/;

export class ProxmoxClient {
  private readonly opts: Required<Omit<ProxmoxClientOptions, 'logger' | 'caCerts' | 'onCall' | 'loopbackEndpoints'>> &
    Pick<ProxmoxClientOptions, 'logger' | 'caCerts' | 'onCall' | 'loopbackEndpoints'>;
  /** Least recently used out first; an evicted pool finishes the requests running on it. */
  private readonly pools: LRUCache<string, PoolEntry>;
  /** Endpoint lists (by key) whose calls start at a fallback that worked, for preferWorkingEndpointMs. */
  private readonly preferred = lruCache<string, { index: number }>({ max: 4_096 });
  private readonly policy: HostPolicy;
  /**
   * Each target's checked endpoints, pool keys and TLS modes, made on its first request and
   * again when one of its values changed (a target may be changed in place, see preparedFrom).
   */
  private readonly preparedTargets = new WeakMap<ProxmoxTarget, PreparedTarget>();

  constructor(opts: ProxmoxClientOptions) {
    if (!Number.isFinite(opts.timeoutMs) || opts.timeoutMs <= 0) {
      throw new TypeError('timeoutMs must be a positive number');
    }
    this.opts = {
      maxResponseBytes: DEFAULT_MAX_RESPONSE_BYTES,
      retries: 2,
      maxPools: 64,
      connectionsPerNode: 16,
      preferWorkingEndpointMs: 30_000,
      ...opts,
    };
    this.policy = {
      allowLoopbackHosts: this.opts.allowLoopbackHosts,
      allowPrivateHosts: this.opts.allowPrivateHosts,
      ...(this.opts.loopbackEndpoints ? { loopbackEndpoints: this.opts.loopbackEndpoints } : {}),
    };
    this.pools = lruCache({
      max: this.opts.maxPools,
      onEvict: (old, key) => {
        this.opts.logger?.debug?.({ pool: key.replace(/\|pin:.*/, '|pin') }, 'proxmox pool evicted');
        // Graceful: requests already running on it finish.
        old.pool.close().catch(() => undefined);
      },
    });
  }

  // ---------------------------------------------------------------- public API

  async version(t: ProxmoxTarget): Promise<ProxmoxVersion> {
    const v = await this.get(t, '/version', versionSchema);
    return {
      version: v.version,
      release: v.release ?? v.version.replace(/^(\d+\.\d+).*$/, '$1'),
      ...(v.repoid !== undefined ? { repoid: v.repoid } : {}),
    };
  }

  async clusterStatus(t: ProxmoxTarget): Promise<ProxmoxClusterStatus> {
    const entries = await this.get(t, '/cluster/status', clusterStatusSchema);
    const cluster = entries.find((e) => e.type === 'cluster');
    const nodeNames = entries
      .filter((e) => e.type === 'node' && typeof e.name === 'string' && e.name !== '')
      .map((e) => e.name as string);
    const members = new Map<string, ClusterMember>();
    for (const e of entries) {
      if (e.type !== 'node' || typeof e.name !== 'string' || e.name === '') continue;
      members.set(e.name, {
        name: e.name,
        address: e.ip || null,
        online: e.online === undefined ? true : e.online === 1,
      });
    }
    return {
      clusterName: cluster?.name ?? null,
      nodeNames: [...new Set(nodeNames)].sort(),
      members: [...members.values()].sort((a, b) => a.name.localeCompare(b.name)),
    };
  }

  /**
   * The cluster's identity from its members' certificate fingerprints (GET /nodes). null when
   * the token may not see them (403, or no fingerprint in the answer).
   */
  async identity(t: ProxmoxTarget, clusterName: string | null): Promise<ClusterIdentity | null> {
    try {
      const fingerprints = new Set<string>();
      for (const n of await this.get(t, '/nodes', nodeListSchema)) {
        const fp = n.ssl_fingerprint?.trim().toUpperCase();
        if (fp && SHA256_FINGERPRINT.test(fp)) fingerprints.add(fp);
      }
      return fingerprints.size === 0 ? null : { clusterName, memberFingerprints: [...fingerprints].sort() };
    } catch (err) {
      if (isDomain(err) && err.code === ErrorCode.PROXMOX_FORBIDDEN) return null;
      throw err;
    }
  }

  /** Every guest (QEMU and LXC) of the cluster the token may audit, ascending by vmid. */
  async guests(t: ProxmoxTarget): Promise<ProxmoxGuest[]> {
    const entries = await this.get(t, '/cluster/resources?type=vm', resourcesSchema, plainResources);
    const out: ProxmoxGuest[] = [];
    for (const e of entries) {
      if (e.type !== 'qemu' && e.type !== 'lxc') continue;
      let vmid = e.vmid;
      if (vmid === undefined && e.id) {
        const m = /^(?:qemu|lxc)\/(\d+)$/.exec(e.id);
        if (m?.[1]) vmid = Number.parseInt(m[1], 10);
      }
      if (vmid === undefined) {
        throw new ProxmoxApiError('Proxmox returned a guest without a vmid.', null, {
          path: '/cluster/resources',
        });
      }
      out.push({
        vmid,
        type: e.type,
        node: e.node ?? '',
        status: e.status ?? 'unknown',
        ...(e.name !== undefined ? { name: e.name } : {}),
        ...(e.template !== undefined ? { template: e.template } : {}),
      });
    }
    return out.sort((a, b) => a.vmid - b.vmid);
  }

  /** Guests of one Proxmox node from /nodes/{node}/qemu and /lxc, ascending by vmid. */
  async nodeGuests(t: ProxmoxTarget, node: string): Promise<ProxmoxGuest[]> {
    const n = encodeURIComponent(node);
    const [qemu, lxc] = await Promise.all([
      this.get(t, `/nodes/${n}/qemu`, nodeGuestsSchema),
      this.get(t, `/nodes/${n}/lxc`, nodeGuestsSchema),
    ]);
    const map = (type: 'qemu' | 'lxc') => (e: z.infer<typeof nodeGuestsSchema>[number]) => ({
      vmid: e.vmid,
      type,
      node,
      status: e.status ?? 'unknown',
      ...(e.name !== undefined ? { name: e.name } : {}),
      ...(e.template !== undefined ? { template: e.template } : {}),
    });
    return [...qemu.map(map('qemu')), ...lxc.map(map('lxc'))].sort((a, b) => a.vmid - b.vmid);
  }

  /**
   * Without vmid: the lowest free VMID Proxmox reports. With vmid: returns it when it is
   * free in the whole cluster, throws CONFLICT ("VM N already exists") when it is taken.
   * Reserves nothing.
   */
  async nextId(t: ProxmoxTarget, vmid?: number): Promise<number> {
    if (vmid === undefined) return this.get(t, '/cluster/nextid', nextIdSchema, plainInt);
    if (!Number.isInteger(vmid) || vmid < MIN_VMID || vmid > MAX_VMID) {
      throw new BadUserInputError(`VMID must be an integer from ${MIN_VMID} to ${MAX_VMID}.`, {
        vmid: `must be an integer from ${MIN_VMID} to ${MAX_VMID}`,
      });
    }
    try {
      return await this.get(t, `/cluster/nextid?vmid=${vmid}`, nextIdSchema, plainInt);
    } catch (err) {
      if (err instanceof ProxmoxApiError && err.status === 400) {
        const errors = err.extensions['proxmoxErrors'] as Record<string, unknown> | undefined;
        const msg = errors?.['vmid'];
        if (typeof msg === 'string' && /already exists/i.test(msg)) {
          throw new ConflictError(`VM ${vmid} already exists`, { vmid });
        }
      }
      throw err;
    }
  }

  /**
   * The datacenter's `next-id` range (datacenter.cfg, PVE ≥ 7.2) as [lower, upper), or null
   * when none is set. With only `lower` set, upper is Proxmox's default (1,000,000).
   */
  async nextIdRange(t: ProxmoxTarget): Promise<VmidRange | null> {
    const range = (await this.get(t, '/cluster/options', clusterOptionsSchema))['next-id'];
    if (!range || (range.lower === undefined && range.upper === undefined)) return null;
    return { lower: range.lower ?? DEFAULT_NEXT_ID_LOWER, upper: range.upper ?? DEFAULT_NEXT_ID_UPPER };
  }

  /**
   * Recent tasks of the cluster (GET /cluster/tasks), as listed: every member's with `Sys.Audit`
   * on `/`, otherwise only the token's own. Fields missing from an entry are read from its UPID.
   */
  async tasks(t: ProxmoxTarget): Promise<ProxmoxTask[]> {
    const entries = await this.get(t, '/cluster/tasks', tasksSchema);
    return entries.map((e) => {
      // UPID:node:PID:PSTART:STARTTIME:type:id:user: (numbers in hex)
      const parts = e.upid.split(':');
      const fromUpid = parts[0] === 'UPID' && parts.length >= 8;
      const start = fromUpid ? Number.parseInt(parts[4]!, 16) : Number.NaN;
      return {
        upid: e.upid,
        node: e.node ?? (fromUpid ? parts[1]! : ''),
        type: e.type ?? (fromUpid ? parts[5]! : ''),
        id: e.id ?? (fromUpid ? parts[6]! : ''),
        user: e.user ?? (fromUpid ? parts.slice(7, -1).join(':') : ''),
        starttime: e.starttime ?? (Number.isFinite(start) ? start : 0),
        ...(e.status !== undefined ? { status: e.status } : {}),
        ...(e.endtime !== undefined ? { endtime: e.endtime } : {}),
      };
    });
  }

  /**
   * The token's privileges, as GET /access/permissions reports them (with privilege separation,
   * the intersection of the token's and its user's): ACL path → privilege → propagates. Without
   * `path`, every path Proxmox lists (its top-level paths and those with ACLs; paths without any
   * privilege are left out). With `path`, only that one: Proxmox's effective set there,
   * inherited privileges included — an empty map when it holds none.
   */
  async permissions(t: ProxmoxTarget, path?: string): Promise<ProxmoxPermissions> {
    const query = path === undefined ? '' : `?path=${encodeURIComponent(normalizeAclPath(path))}`;
    const data = await this.get(t, `/access/permissions${query}`, permissionsSchema);
    const out: ProxmoxPermissions = new Map();
    for (const [p, privs] of Object.entries(data)) {
      const key = normalizeAclPath(p);
      const merged = out.get(key) ?? new Map<string, boolean>();
      for (const [priv, propagates] of Object.entries(privs)) merged.set(priv, propagates || merged.get(priv) === true);
      out.set(key, merged);
    }
    if (path !== undefined && !out.has(normalizeAclPath(path))) out.set(normalizeAclPath(path), new Map());
    return out;
  }

  /**
   * What pvegraph needs (REQUIRED_PRIVILEGES) that the token lacks, as "Privilege@path": each
   * required path is asked for separately (in parallel), so Proxmox's own inheritance rules
   * decide (propagated grants from parents count; a more specific ACL can take them away).
   * Throws when /access/permissions cannot be read.
   */
  async missingPrivileges(t: ProxmoxTarget): Promise<string[]> {
    const answers = await Promise.all(requiredPaths().map((p) => this.permissions(t, p)));
    const merged: Map<string, ReadonlyMap<string, boolean>> = new Map();
    for (const answer of answers) for (const [p, privs] of answer) merged.set(p, privs);
    return missingPrivileges(merged satisfies PermissionMap);
  }

  /** missingPrivileges, or nothing when Proxmox cannot say (never throws). */
  private async missingPrivilegesOrNone(t: ProxmoxTarget): Promise<string[]> {
    try {
      return await this.missingPrivileges(t);
    } catch (err) {
      this.opts.logger?.debug?.(
        {
          host: bareHost(t.host),
          port: t.port,
          code: err instanceof DomainError ? err.code : undefined,
          message: err instanceof Error ? redact(err, t.tokenSecret).message : String(err),
        },
        'could not read the token permissions; reporting none missing',
      );
      return [];
    }
  }

  /** Never throws for Proxmox-side failures; input errors (bad fingerprint format) do throw. */
  async testConnection(t: ProxmoxTarget): Promise<ConnectionTestResult> {
    const started = performance.now();
    const elapsed = () => Math.max(0, Math.round(performance.now() - started));
    let version: ProxmoxVersion | null = null;
    let latencyMs = 0;
    try {
      version = await this.version(t);
      latencyMs = elapsed();
      const cs = await this.clusterStatus(t);
      const identity = await this.identity(t, cs.clusterName);
      const missing = await this.missingPrivilegesOrNone(t);
      return {
        ok: true,
        latencyMs,
        version: version.version,
        release: version.release,
        fingerprint: this.lastFingerprint(t),
        clusterName: cs.clusterName,
        pveNodeNames: cs.nodeNames,
        members: cs.members,
        identity,
        missingPrivileges: missing,
        errorCode: null,
        message: null,
      };
    } catch (err) {
      if (!isDomain(err) || err.code === ErrorCode.BAD_USER_INPUT) throw err;
      const extFp = err.extensions['fingerprint'];
      // The token authenticated but was refused something: say what it lacks.
      const missing = version && err.code === ErrorCode.PROXMOX_FORBIDDEN ? await this.missingPrivilegesOrNone(t) : [];
      return {
        ok: false,
        latencyMs: version ? latencyMs : elapsed(),
        version: version?.version ?? null,
        release: version?.release ?? null,
        fingerprint: typeof extFp === 'string' ? extFp : this.lastFingerprint(t),
        clusterName: null,
        pveNodeNames: [],
        members: [],
        identity: null,
        missingPrivileges: missing,
        errorCode: err.code,
        message: err.message,
      };
    }
  }

  /**
   * Fingerprint of the certificate last presented by this target's host over this client's
   * pooled connections (null before the first connection).
   */
  lastFingerprint(t: ProxmoxTarget): string | null {
    try {
      return this.pools.peek(this.poolKey(t))?.fingerprint ?? null;
    } catch {
      return null;
    }
  }

  /** Closes every pooled connection. The client can still be used afterwards. */
  async close(): Promise<void> {
    const entries = [...this.pools.values()];
    this.pools.clear();
    await Promise.all(entries.map((e) => e.pool.destroy().catch(() => undefined)));
  }

  // ---------------------------------------------------------------- internals

  private poolKey(t: ProxmoxTarget): string {
    return poolKeyOf(bareHost(t.host), t.port, tlsModeOf(t, this.opts.caCerts));
  }

  private poolFor(ep: PreparedEndpoint): PoolEntry {
    const existing = this.pools.get(ep.poolKey);
    if (existing) return existing;
    const { host, port, poolKey: key } = ep;
    const entry: PoolEntry = { key, pool: undefined as unknown as Pool, fingerprint: null };
    entry.pool = new Pool(`https://${urlHost(host)}:${port}`, {
      connections: this.opts.connectionsPerNode,
      pipelining: 1,
      keepAliveTimeout: 4_000,
      keepAliveMaxTimeout: 30_000,
      headersTimeout: this.opts.timeoutMs,
      bodyTimeout: this.opts.timeoutMs,
      connect: makeConnector({
        host,
        port,
        tls: ep.tls,
        policy: this.policy,
        timeoutMs: this.opts.timeoutMs,
        onFingerprint: (fp) => {
          entry.fingerprint = fp;
        },
      }),
    });
    this.pools.set(key, entry);
    return entry;
  }

  /** The target, checked and prepared for requests (once, until one of its values changes). */
  private prepared(t: ProxmoxTarget): PreparedTarget {
    const known = this.preparedTargets.get(t);
    if (known && preparedFrom(known, t)) return known;
    const p = this.prepare(t);
    this.preparedTargets.set(t, p);
    return p;
  }

  /** Checks the target (throws BAD_USER_INPUT, HOST_NOT_ALLOWED) and computes what its requests need. */
  private prepare(t: ProxmoxTarget): PreparedTarget {
    if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65535) {
      throw new BadUserInputError('The port must be an integer from 1 to 65535.', { port: 'out of range' });
    }
    if (!/^[^\s=\0]+$/.test(t.tokenId)) {
      throw new BadUserInputError('The token id must look like USER@REALM!TOKENID.', {
        tokenId: 'invalid token id',
      });
    }
    if (t.tokenSecret === '' || /[\r\n\0]/.test(t.tokenSecret)) {
      throw new BadUserInputError('The token secret is empty or contains control characters.', {
        tokenSecret: 'invalid token secret',
      });
    }
    const given = endpointsOf(t);
    const endpoints: PreparedEndpoint[] = [];
    // Every endpoint is held to the same rules as the primary, before anything is sent.
    for (const [index, ep] of given.entries()) {
      if (!Number.isInteger(ep.port) || ep.port < 1 || ep.port > 65535) {
        throw new BadUserInputError('The port must be an integer from 1 to 65535.', { port: 'out of range' });
      }
      assertLiteralAllowed(ep.host, this.policy, ep.port);
      // A malformed pin is BAD_USER_INPUT.
      const tls = tlsModeOf({ ...ep, allowInsecureTls: t.allowInsecureTls }, this.opts.caCerts);
      const host = bareHost(ep.host);
      endpoints.push({
        index,
        // A copy: a fallback changed in place must not change what it is compared with.
        given: index === 0 ? ep : { host: ep.host, port: ep.port, tlsFingerprint: ep.tlsFingerprint },
        host,
        port: ep.port,
        tls,
        poolKey: poolKeyOf(host, ep.port, tls),
      });
    }
    return {
      host: t.host,
      port: t.port,
      tokenId: t.tokenId,
      tokenSecret: t.tokenSecret,
      tlsFingerprint: t.tlsFingerprint,
      allowInsecureTls: t.allowInsecureTls,
      endpoints,
      stickyKey: endpoints.length > 1 ? endpointsKey(given) : '',
      authorization: `PVEAPIToken=${t.tokenId}=${t.tokenSecret}`,
    };
  }

  /**
   * GET `path` (relative to /api2/json), with retries, deadline and validation of `data`.
   * `plain`: a hand check of the usual shape, for large answers; null leaves the answer to
   * `schema` (so zod's errors stay the errors).
   */
  private async get<S extends z.ZodType>(
    t: ProxmoxTarget,
    path: string,
    schema: S,
    plain?: (data: unknown) => z.output<S> | null,
  ): Promise<z.output<S>> {
    const onCall = this.opts.onCall;
    if (!onCall) return this.getUnreported(t, path, schema, plain);
    const started = performance.now();
    const report = (outcome: string) =>
      onCall({ path: pathOf(path), outcome, durationMs: performance.now() - started });
    try {
      const data = await this.getUnreported(t, path, schema, plain);
      report('ok');
      return data;
    } catch (err) {
      report(err instanceof DomainError ? err.code : 'INTERNAL');
      throw err;
    }
  }

  private async getUnreported<S extends z.ZodType>(
    t: ProxmoxTarget,
    path: string,
    schema: S,
    plain?: (data: unknown) => z.output<S> | null,
  ): Promise<z.output<S>> {
    try {
      const p = this.prepared(t);
      const timeoutMs = this.opts.timeoutMs;
      const deadline = Date.now() + timeoutMs;
      const ac = new AbortController();
      let timer: NodeJS.Timeout | undefined;
      const expired = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          ac.abort();
          reject(new ProxmoxTimeoutError(timeoutMs));
        }, timeoutMs);
      });
      const work = this.attempts(t, p, path, deadline, ac.signal, expired);
      work.catch(() => undefined); // may settle after the deadline
      try {
        const raw = await Promise.race([work, expired]);
        return this.parse(raw, path, schema, plain);
      } finally {
        // Do not abort `ac` here: aborting a finished request would destroy its
        // (reusable) keep-alive socket.
        clearTimeout(timer);
      }
    } catch (err) {
      throw redact(err, t.tokenSecret);
    }
  }

  /**
   * Rounds over the endpoints (the primary first, or the one that last worked): within a
   * round an unreachable endpoint (network, timeout, 5xx) passes the request to the next one
   * at once; a refusal (401, 403, other 4xx, TLS, host policy) answers at once, from whichever
   * endpoint gave it. After a round in which every endpoint failed, the ones whose failure is
   * transient get another round after a backoff (`retries` extra rounds; with one endpoint this
   * is the plain retry of a GET). While endpoints are left in a round, each attempt gets an
   * equal share of the time left, so a hanging endpoint cannot eat the others' time.
   * Not undici's retry interceptor: it retries one origin before the next is tried, where a
   * round here fails over at once and retries only after every endpoint failed, in one deadline.
   */
  private async attempts(
    t: ProxmoxTarget,
    p: PreparedTarget,
    path: string,
    deadline: number,
    signal: AbortSignal,
    expired: Promise<never>,
  ): Promise<RawResponse> {
    const endpoints = p.endpoints;
    const n = endpoints.length;
    const retries = Math.max(0, this.opts.retries);
    const start = n > 1 ? this.preferredEndpoint(p.stickyKey, n) : 0;
    /** Endpoints no longer worth an attempt in a later round (made at the first one). */
    let dead: boolean[] | undefined;
    let lastErr: Error | undefined;
    for (let round = 0; round <= retries; round++) {
      const order = roundOrder(start, n, dead);
      if (order.length === 0) break;
      if (round > 0) {
        const base = BACKOFF_MS[Math.min(round - 1, BACKOFF_MS.length - 1)] ?? 300;
        const delay = Math.round(base * (1 + Math.random() * 0.5));
        // Never sleep past the deadline: give up with the real error instead of a timeout.
        if (Date.now() + delay + 20 >= deadline) break;
        this.opts.logger?.debug?.(
          {
            host: bareHost(t.host),
            port: t.port,
            path,
            attempt: round,
            delayMs: delay,
            code: lastErr instanceof DomainError ? lastErr.code : undefined,
            message: lastErr ? redact(lastErr, t.tokenSecret).message : undefined,
          },
          'retrying Proxmox request',
        );
        try {
          await sleep(delay, undefined, { signal });
        } catch {
          throw new ProxmoxTimeoutError(this.opts.timeoutMs);
        }
      }
      for (let k = 0; k < order.length; k++) {
        const index = order[k]!;
        const ep = endpoints[index]!;
        // The last endpoint of a round has only the whole-request bound: it runs on the
        // request's own signal, no share of its own.
        const left = order.length - k;
        const shareMs = left > 1 ? Math.max(1, Math.floor((deadline - Date.now()) / left)) : 0;
        const share = shareMs > 0 ? shareOf(signal, shareMs) : null;
        let err: Error;
        try {
          const request = this.once(p, this.poolFor(ep), path, share ? share.signal : signal);
          request.catch(() => undefined);
          // undici does not settle a request still waiting for its connection when it is
          // aborted, so the attempt is raced against its signal (as the whole request is):
          // against its share's, or against the request's deadline (`expired`, which rejects
          // right after the request's signal aborted).
          const raw = await Promise.race([request, share ? share.abandoned : expired]);
          this.checkStatus(raw, path);
          this.reportEndpoint(t, ep, null);
          if (n > 1) this.rememberEndpoint(p.stickyKey, index);
          return raw;
        } catch (e) {
          if (signal.aborted) err = new ProxmoxTimeoutError(this.opts.timeoutMs);
          else if (share?.expired())
            err = new ProxmoxTimeoutError(shareMs, `Proxmox at ${ep.host}:${ep.port} did not answer`);
          else err = mapTransportError(e, ep.host, ep.port, this.opts.timeoutMs);
        } finally {
          share?.dispose();
        }
        redact(err, t.tokenSecret);
        if (n > 1 && err instanceof DomainError) {
          err.extensions['endpointIndex'] ??= index;
          err.extensions['host'] ??= ep.host;
          err.extensions['port'] ??= ep.port;
        }
        this.reportEndpoint(t, ep, err);
        if (signal.aborted || !isFailover(err)) throw err;
        lastErr = err;
        if (!isRetryable(err)) (dead ??= [])[index] = true;
        if (k < order.length - 1) {
          this.opts.logger?.debug?.(
            {
              host: ep.host,
              port: ep.port,
              path,
              endpoint: index,
              code: err instanceof DomainError ? err.code : undefined,
              message: err.message,
            },
            'Proxmox endpoint failed, trying the next one',
          );
        }
      }
    }
    throw lastErr ?? new ProxmoxTimeoutError(this.opts.timeoutMs);
  }

  /** Tells the target's callback how an attempt on one endpoint went (never throws). */
  private reportEndpoint(t: ProxmoxTarget, ep: PreparedEndpoint, err: Error | null): void {
    if (!t.onEndpointResult) return;
    const failed = err !== null && endpointFailed(err);
    try {
      t.onEndpointResult({
        index: ep.index,
        host: ep.given.host,
        port: ep.given.port,
        ok: !failed,
        error: failed ? err.message : null,
        code: failed ? (err instanceof DomainError ? err.code : 'INTERNAL') : null,
      });
    } catch (e) {
      this.opts.logger?.warn?.({ err: { message: (e as Error).message } }, 'onEndpointResult threw');
    }
  }

  /** Where the next call of these endpoints starts: the one that last worked, for a while. */
  private preferredEndpoint(key: string, n: number): number {
    const p = this.preferred.get(key);
    if (!p) return 0;
    if (p.index >= n) {
      this.preferred.delete(key);
      return 0;
    }
    return p.index;
  }

  private rememberEndpoint(key: string, index: number): void {
    const ms = this.opts.preferWorkingEndpointMs;
    if (index === 0 || ms <= 0) {
      this.preferred.delete(key);
      return;
    }
    this.preferred.set(key, { index }, { ttl: ms });
  }

  /**
   * One GET on one pooled connection: the status and the body (bounded by maxResponseBytes).
   * Through undici's dispatch with a handler that gathers the body itself: request()'s
   * streamed body (a Readable read by an async iterator) cost about a third of the client's CPU
   * per call, for answers that are read whole anyway. An abort of `signal` rejects at once, and
   * aborts the request on its socket (at once, or when it gets one: a request still waiting for
   * a connection has none yet).
   */
  private once(p: PreparedTarget, entry: PoolEntry, path: string, signal: AbortSignal): Promise<RawResponse> {
    return new Promise<RawResponse>((resolve, reject) => {
      const max = this.opts.maxResponseBytes;
      const tooLarge = (status: number) =>
        new ProxmoxApiError(`Proxmox response too large (over ${max} bytes).`, status, {
          path,
          maxResponseBytes: max,
        });
      let controller: Dispatcher.DispatchController | null = null;
      let settled = false;
      const settle = (err: Error | null, raw?: RawResponse) => {
        if (settled) return;
        settled = true;
        signal.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(raw!);
      };
      /** Ends the request on its socket (once it has one) and the call with `err`. */
      const abortWith = (err: Error) => {
        controller?.abort(err);
        settle(err);
      };
      const onAbort = () => abortWith(new errors.RequestAbortedError());
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      const chunks: Buffer[] = [];
      let size = 0;
      let status = 0;
      let statusText = '';
      entry.pool.dispatch(
        {
          path: `/api2/json${path}`,
          method: 'GET',
          headers: { authorization: p.authorization, accept: 'application/json' },
        },
        {
          onRequestStart: (c) => {
            controller = c;
            if (settled) c.abort(new errors.RequestAbortedError());
          },
          onResponseStart: (_c, statusCode, headers, statusMessage) => {
            status = statusCode;
            statusText = (statusMessage ?? '').trim();
            const declared = Number(headers['content-length']);
            if (Number.isFinite(declared) && declared > max) abortWith(tooLarge(statusCode));
          },
          onResponseData: (_c, chunk) => {
            size += chunk.length;
            if (size > max) return abortWith(tooLarge(status));
            chunks.push(chunk);
          },
          onResponseEnd: () => settle(null, { status, statusText, text: Buffer.concat(chunks).toString('utf8') }),
          onResponseError: (_c, err) => settle(err),
        },
      );
    });
  }

  /** Throws the DomainError for a non-2xx response. */
  private checkStatus(raw: RawResponse, path: string): void {
    const { status } = raw;
    if (status >= 200 && status < 300) return;
    let body: z.infer<typeof errorBodySchema> = {};
    try {
      body = errorBodySchema.parse(JSON.parse(raw.text));
    } catch {
      // error bodies are optional
    }
    const reason = (body.message?.trim() || raw.statusText || `HTTP ${status}`).trim();
    if (status === 401) throw new ProxmoxAuthFailedError(reason);
    if (status === 403) throw new ProxmoxForbiddenError(reason, path.replace(/\?.*$/, ''));
    const ext: Record<string, unknown> = { path: path.replace(/\?.*$/, '') };
    let message = `Proxmox error ${status}: ${reason}`;
    if (body.errors && typeof body.errors === 'object') {
      ext['proxmoxErrors'] = body.errors;
      const details = Object.entries(body.errors)
        .map(([k, v]) => `${k}: ${typeof v === 'string' ? v.trim() : JSON.stringify(v)}`)
        .join('; ');
      if (details) message += ` (${details})`;
    }
    throw new ProxmoxApiError(message, status, ext);
  }

  private parse<S extends z.ZodType>(
    raw: RawResponse,
    path: string,
    schema: S,
    plain?: (data: unknown) => z.output<S> | null,
  ): z.output<S> {
    let json: unknown;
    try {
      json = JSON.parse(raw.text);
    } catch {
      const p = path.replace(/\?.*$/, '');
      throw new ProxmoxApiError(`Proxmox returned malformed JSON for ${p}.`, raw.status, { path: p });
    }
    const inner = envelopeData(json);
    if (inner === undefined) {
      const p = path.replace(/\?.*$/, '');
      throw new ProxmoxApiError(`Proxmox returned an unexpected response for ${p} (no data).`, raw.status, { path: p });
    }
    const checked = plain?.(inner.data);
    if (checked !== null && checked !== undefined) return checked;
    const data = schema.safeParse(inner.data);
    if (!data.success) {
      const p = path.replace(/\?.*$/, '');
      const issue = data.error.issues[0];
      const where = issue ? `${issue.path.join('.') || '(root)'}: ${issue.message}` : 'invalid';
      throw new ProxmoxApiError(`Proxmox returned an unexpected response for ${p} (${where}).`, raw.status, {
        path: p,
      });
    }
    return data.data;
  }
}
