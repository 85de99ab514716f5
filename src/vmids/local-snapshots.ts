import type { VmidSnapshot } from './store.js';

/**
 * An instance's own copy of the nodes' snapshots it read from Redis lately, so a dashboard's
 * repeated `vmidsTaken` is answered from memory instead of a Redis round trip each time
 * (BENCHMARKS.md, finding 27).
 *
 * A copy is only kept while it is known to be current:
 * - every change to a node bumps its version and publishes its event in the same atomic
 *   Redis step (redis-scripts.ts), and this instance receives every event (one pattern
 *   subscription; on a Redis Cluster one sharded subscription per space kept) and drops the node's copy when it arrives. A change made through another
 *   instance is therefore seen here once its event has arrived: usually within a millisecond,
 *   but Redis may answer the changing instance first, so a client that changes through one
 *   instance and reads through another at once can, rarely, read the state before. Live UIs
 *   follow the events themselves; reservations are decided in Redis whatever is kept here;
 *   VMID_READ_CACHE_MS=0 turns this off;
 * - a change made by this instance drops the copy itself, before the change is answered, so
 *   a client that stays with one instance always reads its own changes;
 * - while the pub/sub connection is down (events may be lost) nothing is kept, and everything
 *   kept before is dropped;
 * - a copy ends when its cached set or its first reservation expires (Redis announces the
 *   lapse on the next read), and in any case after `maxAgeMs`: the bound on staleness for
 *   what no event tells of — a refresh that found the set unchanged (only refreshedAt and
 *   expiresAt moved), keys evicted, flushed or edited in Redis, a pub/sub connection that hangs
 *   without closing. (A deleted node's DELETED event ends its copy too.)
 *
 * A read that was on its way while a change arrived is not kept (its answer may predate the
 * change): see `begin` / `keep`. A copy still being read in the last fifth of its lifetime is
 * renewed by a read in the background (`refreshDue`), so a steadily read node is answered
 * from memory without a pause at each bound (an event or an expiry still ends it: the next
 * read then asks Redis).
 */
export class LocalSnapshots {
  /**
   * In the order they were kept (re-kept ones move to the end), so the oldest are swept first.
   * (A read that took long is kept behind younger ones and can stop a sweep early: it only
   * delays freeing memory.)
   */
  private readonly entries = new Map<string, Entry>();
  /** Reads on their way to Redis, per node: a change marks them stale. */
  private readonly pending = new Map<string, Set<PendingRead>>();
  private live = false;

  constructor(
    private readonly maxAgeMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** The longest a snapshot is kept. */
  maxAge(): number {
    return this.maxAgeMs;
  }

  /** The node's kept snapshot, or null: ask Redis. Shared between callers, so frozen. */
  get(nodeId: string): VmidSnapshot | null {
    const entry = this.entries.get(nodeId);
    if (!entry) return null;
    if (this.now() < entry.until) return entry.snapshot;
    this.entries.delete(nodeId);
    return null;
  }

  /**
   * Whether the caller should read the node from Redis in the background now, keeping the
   * answer: true once per kept snapshot that its bound (not an expiry) ends, in the last fifth
   * of its lifetime. A node read steadily is then renewed before the bound, so its reads do not
   * wait there for a Redis round trip — one that stalls would otherwise hold every request
   * arriving meanwhile (BENCHMARKS.md, finding 28). The bound is unchanged: the renewed copy
   * counts from its own read.
   */
  refreshDue(nodeId: string): boolean {
    const entry = this.entries.get(nodeId);
    if (!entry || entry.refreshing || this.now() < entry.refreshFrom) return false;
    entry.refreshing = true;
    return true;
  }

  /** Called before a read is sent to Redis; `keep` it with the answer, or `abandon` it. */
  begin(nodeId: string): PendingRead | null {
    if (!this.live) return null;
    const read: PendingRead = { nodeId, startedAt: this.now(), stale: false };
    let reads = this.pending.get(nodeId);
    if (!reads) this.pending.set(nodeId, (reads = new Set()));
    reads.add(read);
    return read;
  }

  /**
   * Keeps Redis's answer to `read` unless something changed since it was sent, or it says
   * the set is not cached. `redisNowMs` is Redis's clock when it answered: expiries are
   * counted from it (as durations), so the instances' clocks do not matter.
   */
  keep(read: PendingRead, snapshot: VmidSnapshot, redisNowMs: number): void {
    this.abandon(read);
    if (read.stale || !this.live || !snapshot.cache) return;
    let lifetime = Math.min(this.maxAgeMs, snapshot.cache.expiresAt.getTime() - redisNowMs);
    if (snapshot.firstExpiry) lifetime = Math.min(lifetime, snapshot.firstExpiry.getTime() - redisNowMs);
    if (lifetime <= 0) return;
    this.sweep();
    this.entries.delete(read.nodeId);
    // Counted from when the read was sent, which is before Redis read its clock: never late.
    this.entries.set(read.nodeId, {
      snapshot: frozen(snapshot),
      startedAt: read.startedAt,
      until: read.startedAt + lifetime,
      // Only a copy ended by the bound is worth renewing: at an expiry, the read must go to
      // Redis anyway (a lapse is announced by it, an expired set is filled).
      refreshFrom: lifetime === this.maxAgeMs ? read.startedAt + lifetime * REFRESH_FROM : Infinity,
      refreshing: false,
    });
  }

  /**
   * Drops the oldest entries that are past maxAgeMs, so nodes read once do not stay in
   * memory. Runs only when something is kept: on a read from Redis, not on the reads
   * answered here.
   */
  private sweep(): void {
    const oldest = this.now() - this.maxAgeMs;
    for (const [nodeId, entry] of this.entries) {
      if (entry.startedAt > oldest) return;
      this.entries.delete(nodeId);
    }
  }

  abandon(read: PendingRead): void {
    const reads = this.pending.get(read.nodeId);
    if (!reads?.delete(read)) return;
    if (reads.size === 0) this.pending.delete(read.nodeId);
  }

  /** The node changed (its event arrived, or this instance changed it): drop its copy. */
  changed(nodeId: string): void {
    this.entries.delete(nodeId);
    const reads = this.pending.get(nodeId);
    if (reads) for (const read of reads) read.stale = true;
  }

  /** Events are being received (the pattern subscription is confirmed by Redis). */
  resumed(): void {
    this.live = true;
  }

  /** Events may be lost from now on: keep nothing, and forget what was kept. */
  lost(): void {
    this.live = false;
    this.clear();
  }

  /** Drops every kept snapshot, and keeps no read on its way. */
  clear(): void {
    this.entries.clear();
    for (const reads of this.pending.values()) for (const read of reads) read.stale = true;
  }

  /** Nodes with a kept snapshot (tests). */
  size(): number {
    return this.entries.size;
  }

  /** Whether reads are kept now (events are being received). */
  keeping(): boolean {
    return this.live;
  }
}

/** A kept copy is renewed in the background from this share of its lifetime on. */
const REFRESH_FROM = 0.8;

interface Entry {
  snapshot: VmidSnapshot;
  startedAt: number;
  until: number;
  /** From when a read asks for it to be renewed (refreshDue). */
  refreshFrom: number;
  /** A renewal was asked for: once per entry (a failed one leaves the entry to run out). */
  refreshing: boolean;
}

export interface PendingRead {
  readonly nodeId: string;
  readonly startedAt: number;
  stale: boolean;
}

/**
 * Callers share a kept snapshot: a mutation by one of them would change every answer. (Its
 * Dates stay mutable through setTime; nothing here calls it.)
 */
function frozen(snapshot: VmidSnapshot): VmidSnapshot {
  if (snapshot.cache) Object.freeze(Object.freeze(snapshot.cache).taken);
  Object.freeze(snapshot.reserved);
  return Object.freeze(snapshot);
}
