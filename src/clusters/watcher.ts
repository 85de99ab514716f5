import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { DomainError, ErrorCode } from '../errors.js';
import type { ProxmoxTask } from '../proxmox/index.js';
import type { NodeRef } from '../vmids/types.js';
import type { WatchLease } from './lease.js';
import { compareTasks, cursorOf, parseCursor, type TaskCursor, type TaskVerdict } from './task-cursor.js';

export type ProbeOutcome = TaskVerdict | 'forbidden' | 'rate_limited' | 'error';
export type ListingOutcome = 'ok' | 'rate_limited' | 'error';

export interface ClusterWatcherOptions {
  lease: WatchLease;
  /** VMID_WATCH_INTERVAL_S in ms: one probe per space per interval, across all instances. */
  intervalMs: number;
  /**
   * The cheap probe: the cluster's recent tasks (GET /cluster/tasks) through the registration,
   * charged to its owner's Proxmox budget (RATE_LIMITED: skipped this interval).
   */
  probe: (node: NodeRef) => Promise<ProxmoxTask[]>;
  /** The full listing: asks Proxmox and publishes REFRESHED when the set changed (VmidService.refreshSet). */
  refresh: (node: NodeRef) => Promise<unknown>;
  /**
   * Whether the space has a cached set (VmidService.hasCachedSet). When the probe cannot tell
   * what changed, only a cached set needs the listing: without one the next read asks Proxmox,
   * and the tasks seen now are the baseline. Absent: always list then.
   */
  isCached?: (node: NodeRef) => Promise<boolean>;
  log?: Logger;
  /** How long a lease lives without renewal (a dead holder is replaced after this). Default 6 s. */
  leaseTtlMs?: number;
  /** How often the holder renews and every other watching instance competes. Default leaseTtlMs / 3. */
  leaseTickMs?: number;
  onProbe?: (outcome: ProbeOutcome) => void;
  onListing?: (outcome: ListingOutcome) => void;
}

/** While Proxmox (or the store a listing is written to) fails, the delay doubles up to this many intervals. */
const MAX_BACKOFF_INTERVALS = 6;
/** With /cluster/tasks forbidden, the full listing stands in for it; the tasks are tried again after this many intervals. */
const FORBIDDEN_RETRY_INTERVALS = 60;
/** A holder stops probing this long before its lease would lapse unrenewed. */
const LEASE_MARGIN_MS = 500;

interface Space {
  id: string;
  /** This instance's token for the space's lease. */
  token: string;
  /** Registrations of the space that local subscriptions cover (any one can reach Proxmox), with their subscription counts. */
  refs: Map<string, { ref: NodeRef; count: number }>;
  /** performance.now() until which the lease is ours; 0: not the holder. */
  heldUntil: number;
  leaseTimer: NodeJS.Timeout | undefined;
  probeTimer: NodeJS.Timeout | undefined;
  /** A probe round is in flight (it schedules the next one itself). */
  probing: boolean;
  /** The last tasks seen; null: unknown (the next probe lists). */
  cursor: TaskCursor | null;
  /** The next round lists whatever the tasks say (a failed round, a skipped listing). */
  mustList: boolean;
  /** Failed rounds in a row (backoff). */
  failures: number;
  /** Intervals left in which the full listing stands in for a forbidden /cluster/tasks. */
  forbiddenRounds: number;
  ended: boolean;
}

/**
 * A watcher per cluster, not per client: while a VMID space has a subscriber on any instance,
 * exactly one instance (the lease holder) asks Proxmox each interval for the cluster's recent
 * tasks, and for the full guest listing only when a guest task appeared since the last probe
 * or the probe cannot tell (first probe of a holder without a saved cursor, tasks forbidden,
 * an earlier failure). Changes reach subscribers as REFRESHED through the listing
 * (VmidService.refreshSet). Every instance with local subscribers of a space competes for its lease;
 * the last local subscriber leaving releases it.
 */
export class ClusterWatcher {
  private readonly spaces = new Map<string, Space>();
  private readonly lease: WatchLease;
  private readonly intervalMs: number;
  private readonly leaseTtlMs: number;
  private readonly leaseTickMs: number;
  private closed = false;

  constructor(private readonly opts: ClusterWatcherOptions) {
    this.lease = opts.lease;
    this.intervalMs = opts.intervalMs;
    this.leaseTtlMs = opts.leaseTtlMs ?? 6_000;
    this.leaseTickMs = opts.leaseTickMs ?? Math.max(100, Math.floor(this.leaseTtlMs / 3));
  }

  /**
   * One more local subscription covers `node`'s space; the returned function ends it. The
   * first one starts competing for the space's lease; the last one leaving stops the watch.
   */
  watch(node: NodeRef): () => void {
    if (this.closed) return () => undefined;
    let space = this.spaces.get(node.spaceId);
    if (!space) {
      space = {
        id: node.spaceId,
        token: randomBytes(12).toString('base64url'),
        refs: new Map(),
        heldUntil: 0,
        leaseTimer: undefined,
        probeTimer: undefined,
        probing: false,
        cursor: null,
        mustList: true,
        failures: 0,
        forbiddenRounds: 0,
        ended: false,
      };
      this.spaces.set(node.spaceId, space);
      this.scheduleLease(space, 0);
    }
    const entry = space.refs.get(node.id) ?? { ref: node, count: 0 };
    entry.count++;
    space.refs.set(node.id, entry);
    const watched = space;
    let active = true;
    return () => {
      if (!active) return;
      active = false;
      const e = watched.refs.get(node.id);
      if (e && --e.count <= 0) watched.refs.delete(node.id);
      if (watched.refs.size === 0) void this.end(watched);
    };
  }

  /** Spaces with local subscribers (tests, metrics). */
  watchedSpaces(): number {
    return this.spaces.size;
  }

  /** Whether this instance holds the space's lease now (tests). */
  holds(spaceId: string): boolean {
    const space = this.spaces.get(spaceId);
    return space !== undefined && this.isHolder(space);
  }

  /** Stops every watch and releases the leases held (another instance takes over at once). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.spaces.values()].map((s) => this.end(s)));
  }

  // ------------------------------------------------------------------ lease

  private async end(space: Space): Promise<void> {
    if (space.ended) return;
    space.ended = true;
    clearTimeout(space.leaseTimer);
    clearTimeout(space.probeTimer);
    if (this.spaces.get(space.id) === space) this.spaces.delete(space.id);
    const held = space.heldUntil > 0;
    space.heldUntil = 0;
    // Not only when it thinks it holds it: a renewal may have gone through unanswered.
    try {
      await this.lease.release(space.id, space.token);
    } catch (err) {
      if (held)
        this.opts.log?.warn(
          { spaceId: space.id, err: { message: (err as Error).message } },
          'cluster watch: could not release the lease; it lapses by itself',
        );
    }
  }

  private scheduleLease(space: Space, delayMs: number): void {
    clearTimeout(space.leaseTimer);
    // A little jitter: instances that started together do not ask Redis in lockstep.
    const jitter = delayMs === 0 ? 0 : Math.floor(Math.random() * Math.min(200, this.leaseTickMs / 10));
    space.leaseTimer = setTimeout(() => void this.leaseTick(space), delayMs + jitter).unref();
  }

  private isHolder(space: Space, marginMs = 0): boolean {
    return space.heldUntil - marginMs > performance.now();
  }

  /** Renews the lease when held, competes for it otherwise. */
  private async leaseTick(space: Space): Promise<void> {
    if (space.ended) return;
    const started = performance.now();
    let got: boolean | null;
    try {
      got = await this.lease.acquire(space.id, space.token, this.leaseTtlMs);
    } catch (err) {
      // Redis unreachable: a holder keeps the lease until it would lapse, nobody takes it.
      this.opts.log?.debug(
        { spaceId: space.id, err: { message: (err as Error).message } },
        'cluster watch: lease not renewed',
      );
      got = null;
    }
    if (space.ended) {
      if (got) await this.lease.release(space.id, space.token).catch(() => undefined);
      return;
    }
    if (got) {
      const wasHolder = this.isHolder(space);
      space.heldUntil = started + this.leaseTtlMs;
      if (!wasHolder) await this.taken(space);
      // A round that found the lease about to lapse (a late renewal) scheduled no next one.
      else if (!space.probing && space.probeTimer === undefined) this.scheduleProbe(space, 0);
    } else if (got === false && space.heldUntil > 0) {
      this.opts.log?.info({ spaceId: space.id }, 'cluster watch: lease lost to another instance');
      space.heldUntil = 0;
      clearTimeout(space.probeTimer);
      space.probeTimer = undefined;
    }
    if (!space.ended) this.scheduleLease(space, Math.max(0, this.leaseTickMs - (performance.now() - started)));
  }

  /** Just became the holder: go on from the last holder's cursor, or list first. */
  private async taken(space: Space): Promise<void> {
    this.opts.log?.debug({ spaceId: space.id }, 'cluster watch: lease taken');
    let saved: TaskCursor | null;
    try {
      saved = parseCursor(await this.lease.loadCursor(space.id));
    } catch {
      saved = null;
    }
    space.cursor = saved;
    space.mustList = saved === null;
    space.failures = 0;
    if (!space.probing) this.scheduleProbe(space, 0);
  }

  // ------------------------------------------------------------------ probing

  private scheduleProbe(space: Space, delayMs: number): void {
    clearTimeout(space.probeTimer);
    space.probeTimer = undefined;
    if (space.ended) return;
    space.probeTimer = setTimeout(
      () => {
        space.probeTimer = undefined;
        void this.round(space);
      },
      Math.max(0, delayMs),
    ).unref();
  }

  /** One probe round (when this instance holds the lease), then the next one is scheduled. */
  private async round(space: Space): Promise<void> {
    if (space.ended || space.probing || !this.isHolder(space, LEASE_MARGIN_MS)) return;
    space.probing = true;
    const started = performance.now();
    let next = this.intervalMs;
    try {
      let wait: number;
      try {
        // Across instances, at most one probe per interval (a lease changing hands included).
        wait = await this.lease.claimProbe(space.id, space.token, this.intervalMs);
      } catch {
        return; // the lease's store is unreachable: try again next interval
      }
      if (wait < 0) {
        space.heldUntil = 0; // lost: the lease tick competes again
        next = -1;
        return;
      }
      if (wait > 0) {
        next = wait;
        return;
      }
      const failed = await this.check(space);
      if (failed) next = this.intervalMs * Math.min(2 ** space.failures, MAX_BACKOFF_INTERVALS);
      next = Math.max(0, next - (performance.now() - started));
    } catch (err) {
      this.opts.log?.error({ err, spaceId: space.id }, 'cluster watch: round failed');
    } finally {
      space.probing = false;
      if (next >= 0 && !space.ended && space.heldUntil > 0) this.scheduleProbe(space, next);
    }
  }

  /** Probes, lists when needed; answers whether Proxmox failed (back off). */
  private async check(space: Space): Promise<boolean> {
    const node = this.registration(space);
    if (!node) return false;
    // list: a guest task appeared (or the tasks cannot be read); unsure: nothing to compare with.
    let list = false;
    let unsure = space.mustList;
    let seen: TaskCursor | null = null;
    if (space.forbiddenRounds > 0) {
      space.forbiddenRounds--;
      list = true;
    } else {
      try {
        const tasks = await this.opts.probe(node);
        const verdict = compareTasks(space.cursor, tasks);
        this.opts.onProbe?.(verdict);
        seen = cursorOf(tasks);
        if (verdict === 'changed') list = true;
        if (verdict === 'unknown') unsure = true;
      } catch (err) {
        const code = codeOf(err);
        if (code === ErrorCode.RATE_LIMITED) {
          this.opts.onProbe?.('rate_limited');
          return false;
        }
        if (code === ErrorCode.PROXMOX_FORBIDDEN) {
          // The full listing stands in for the tasks, once per interval.
          this.opts.onProbe?.('forbidden');
          this.opts.log?.warn(
            { spaceId: space.id, nodeId: node.id },
            'cluster watch: /cluster/tasks forbidden (Sys.Audit on /); listing guests every interval instead',
          );
          space.forbiddenRounds = FORBIDDEN_RETRY_INTERVALS;
          space.cursor = null;
          list = true;
        } else if (code === ErrorCode.NOT_FOUND) {
          this.dropRegistration(space, node);
          return false;
        } else {
          this.opts.onProbe?.('error');
          return this.failed(space, node, err, 'probe');
        }
      }
    }
    if (!list && unsure) {
      try {
        list = this.opts.isCached ? await this.opts.isCached(node) : true;
      } catch (err) {
        return this.failed(space, node, err, 'cache check');
      }
    }
    if (!list) {
      space.cursor = seen;
      space.failures = 0;
      if (unsure) {
        space.mustList = false;
        await this.saveCursor(space, seen);
      }
      return false;
    }
    try {
      await this.opts.refresh(node);
    } catch (err) {
      const code = codeOf(err);
      space.mustList = true;
      if (code === ErrorCode.RATE_LIMITED) {
        this.opts.onListing?.('rate_limited');
        return false;
      }
      if (code === ErrorCode.NOT_FOUND) {
        this.dropRegistration(space, node);
        return false;
      }
      this.opts.onListing?.('error');
      return this.failed(space, node, err, 'listing');
    }
    this.opts.onListing?.('ok');
    space.mustList = false;
    space.failures = 0;
    space.cursor = seen;
    await this.saveCursor(space, seen);
    return false;
  }

  /** For the next holder: what the cache reflects now. */
  private async saveCursor(space: Space, cursor: TaskCursor | null): Promise<void> {
    if (cursor) await this.lease.saveCursor(space.id, space.token, JSON.stringify(cursor)).catch(() => undefined);
  }

  private failed(space: Space, node: NodeRef, err: unknown, what: string): true {
    space.failures++;
    space.mustList = true;
    if (space.failures === 1) {
      this.opts.log?.warn(
        { spaceId: space.id, nodeId: node.id, err: { message: (err as Error).message } },
        `cluster watch: ${what} failed; backing off`,
      );
    }
    return true;
  }

  /** A registration to reach the cluster through: any that a local subscription covers. */
  private registration(space: Space): NodeRef | null {
    return space.refs.values().next().value?.ref ?? null;
  }

  /**
   * The registration is gone (deleted, or its space is): no longer used for the watch. With
   * none left the lease goes to an instance that has one (its subscriptions end meanwhile).
   */
  private dropRegistration(space: Space, node: NodeRef): void {
    space.refs.delete(node.id);
    if (space.refs.size === 0) void this.end(space);
  }
}

function codeOf(err: unknown): string | undefined {
  return err instanceof DomainError ? err.code : undefined;
}
