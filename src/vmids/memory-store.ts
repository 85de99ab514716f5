import { randomUUID } from 'node:crypto';
import { NotFoundError } from '../errors.js';
import type { NodeRef, VmidEvent, VmidEventKind } from './types.js';
import {
  EVENT_LOG_KEEP,
  type FilledSnapshot,
  type Guest,
  type GuestListing,
  type HeldReservation,
  type RefusedReservation,
  type NextFreeOutcome,
  type RefreshOutcome,
  type ReservationSeeder,
  setOutcome,
  type ReserveOutcome,
  type ReserveRequest,
  type VmidSnapshot,
  type VmidStore,
} from './store.js';

interface NodeState {
  cache: Cache | null;
  reservations: Map<number, { until: number; owner: string }>;
  /**
   * No reservation is due before this (ms; may be earlier than the true first expiry after a
   * release), so a look at the reservations does not walk them all each time.
   */
  nextDue: number;
  version: number;
  /** Identity of the last announced taken set: a fill after expiry only counts if it differs. */
  digest: string | null;
  epoch: number;
  lock: { token: string; until: number } | null;
  /** The node was deleted (forget): a tombstone, kept for the life of the process. */
  deleted: boolean;
  /**
   * The reuse hold: vmid → until (ms) of VMIDs that left the used set. While cached, a held
   * VMID is in `used` (the search skips it at no cost) until sweepHolds takes it out.
   */
  held: Map<number, number>;
  /** No hold ends before this (ms), so a search does not walk the holds each time. */
  nextHoldEnd: number;
  /**
   * The taken set as last written (ascending; a fill, or a consume since), kept past the
   * cache's expiry or invalidation: a fill holds what it no longer lists. null: never filled.
   */
  last: number[] | null;
  /** The last EVENT_LOG_KEEP events, ascending (a resuming subscriber replays them). */
  log: VmidEvent[];
}

interface Cache {
  taken: Set<number>;
  /**
   * taken ∪ reserved ∪ held, ascending, each once: the lowest free VMID is found in it by binary
   * search. It lives with the cache because only a cached set is searched (reserve and
   * nextFree answer `miss` without one); a fill rebuilds it.
   */
  used: number[];
  refreshedAt: number;
  expiresAt: number;
  /** The guest listing of the fill that wrote this set (putGuests); it goes with the set. */
  guests?: Guest[];
}

/**
 * The embedded-mode store: the same semantics as RedisVmidStore (TTLs, versions, atomic
 * reservations, events in version order) inside one process. Everything a method does
 * happens synchronously, so each method is atomic just like a Lua script is in Redis.
 */
export class MemoryVmidStore implements VmidStore {
  private readonly nodes = new Map<string, NodeState>();
  private readonly listeners = new Map<string, Set<(event: VmidEvent) => void>>();
  private readonly now: () => number;
  private readonly seeder: ReservationSeeder | undefined;
  /** Spaces whose durable reservations are back in memory (this process's first use of each). */
  private readonly seeded = new Set<string>();
  private readonly seeding = new Map<string, Promise<void>>();
  /** VMID_REUSE_HOLD_S in ms (see VmidStore); 0: no hold. */
  private readonly holdMs: number;

  /** `reuseHoldMs`: the reuse hold (VMID_REUSE_HOLD_S in ms); default 0, none. */
  constructor(opts: { now?: () => number; seeder?: ReservationSeeder; reuseHoldMs?: number } = {}) {
    this.now = opts.now ?? Date.now;
    this.seeder = opts.seeder;
    this.holdMs = Math.max(0, opts.reuseHoldMs ?? 0);
  }

  /**
   * At a space's first use in this process, puts the durable record's live reservations
   * back (the process restarted: memory held them). null when nothing is left to wait for,
   * so a seeded space's methods stay synchronous (atomic) after their first line.
   */
  private seed(spaceId: string): Promise<void> | null {
    if (this.seeded.has(spaceId)) return null;
    const seeder = this.seeder;
    if (!seeder) {
      this.seeded.add(spaceId);
      return null;
    }
    let pending = this.seeding.get(spaceId);
    if (!pending) {
      pending = seeder(spaceId)
        .then(({ held, version }) => {
          const s = this.node(spaceId);
          // After a loss the version goes on well past the last one recorded (see SEED).
          s.version = Math.max(s.version, version > 0 ? version + EVENT_LOG_KEEP : 0);
          this.putBack(spaceId, held);
          this.seeded.add(spaceId);
        })
        .finally(() => this.seeding.delete(spaceId));
      this.seeding.set(spaceId, pending);
    }
    return pending;
  }

  /** The node's state, its expired set dropped. */
  private node(nodeId: string): NodeState {
    let s = this.nodes.get(nodeId);
    if (!s) {
      s = {
        cache: null,
        reservations: new Map(),
        nextDue: Infinity,
        version: 0,
        digest: null,
        epoch: 0,
        lock: null,
        deleted: false,
        held: new Map(),
        nextHoldEnd: Infinity,
        last: null,
        log: [],
      };
      this.nodes.set(nodeId, s);
    }
    if (s.cache && s.cache.expiresAt <= this.now()) s.cache = null;
    return s;
  }

  /**
   * Ends the reservations whose time is up, announced as one RELEASED (the Lua lapse()): at
   * the same points as the Redis scripts, so both stores number events alike.
   */
  private lapse(node: NodeRef, s: NodeState): void {
    const now = this.now();
    if (s.nextDue > now) return;
    const lapsed: number[] = [];
    let next = Infinity;
    for (const [vmid, { until }] of s.reservations) {
      if (until > now) {
        next = Math.min(next, until);
        continue;
      }
      s.reservations.delete(vmid);
      this.unreserve(s, vmid, now);
      lapsed.push(vmid);
    }
    s.nextDue = next;
    if (lapsed.length > 0) this.bump(node, s, 'RELEASED', sorted(lapsed));
  }

  /**
   * `vmids` left the used set at `now`: held until now + holdMs. While cached they stay in (or
   * go into) `used` (`index` false: the caller rebuilds it); a fill puts the live ones back
   * (the Lua hold()).
   */
  private hold(s: NodeState, vmids: Iterable<number>, now: number, index = true): void {
    if (this.holdMs <= 0) return;
    const until = now + this.holdMs;
    for (const vmid of vmids) {
      s.held.set(vmid, until);
      if (index && s.cache) insertSorted(s.cache.used, vmid);
    }
    s.nextHoldEnd = Math.min(s.nextHoldEnd, until);
  }

  /** A reservation ended: held, or without a hold out of `used` unless a guest has it too. */
  private unreserve(s: NodeState, vmid: number, now: number): void {
    if (this.holdMs > 0) this.hold(s, [vmid], now);
    else unuse(s, vmid);
  }

  /**
   * Holds that ended leave `held`, and `used` unless a guest or a reservation has them (the
   * Lua sweep_holds). Walks the holds only when one is due: each hold ends once.
   */
  private sweepHolds(s: NodeState): void {
    const now = this.now();
    if (s.nextHoldEnd > now) return;
    let next = Infinity;
    for (const [vmid, until] of s.held) {
      if (until > now) {
        next = Math.min(next, until);
        continue;
      }
      s.held.delete(vmid);
      if (!s.reservations.has(vmid)) unuse(s, vmid);
    }
    s.nextHoldEnd = next;
  }

  private bump(
    node: NodeRef,
    s: NodeState,
    kind: VmidEventKind,
    vmids: number[] | null,
    expiresAt?: number,
    delta: { added: number[]; removed: number[] } = { added: [], removed: [] },
  ): number {
    s.version += 1;
    const event: VmidEvent = { nodeId: node.id, kind, version: s.version, at: new Date(this.now()), vmids, ...delta };
    if (expiresAt !== undefined) event.expiresAt = new Date(expiresAt);
    s.log.push(event);
    if (s.log.length > EVENT_LOG_KEEP) s.log.splice(0, s.log.length - EVENT_LOG_KEEP);
    for (const listener of [...(this.listeners.get(node.id) ?? [])]) {
      try {
        listener(event);
      } catch {
        // A subscriber's failure must not undo or block the change.
      }
    }
    return s.version;
  }

  /** Live reservations not held already go (back) in; nothing is announced. */
  private putBack(spaceId: string, held: readonly HeldReservation[]): void {
    const s = this.node(spaceId);
    const now = this.now();
    for (const r of held) {
      const until = r.expiresAt.getTime();
      if (until <= now || s.reservations.has(r.vmid)) continue;
      s.reservations.set(r.vmid, { until, owner: r.owner });
      s.nextDue = Math.min(s.nextDue, until);
      if (s.cache) insertSorted(s.cache.used, r.vmid);
    }
  }

  async restore(node: NodeRef, held: readonly HeldReservation[]): Promise<void> {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    if (this.node(node.id).deleted) return; // as SEED: nothing goes into a tombstone
    this.putBack(node.id, held);
  }

  /** Kept in the cache entry of the set it was listed with; for any other set (or none) dropped. */
  async putGuests(node: NodeRef, listing: GuestListing): Promise<void> {
    const cache = this.node(node.id).cache;
    if (cache && cache.refreshedAt === listing.refreshedAt.getTime()) cache.guests = [...listing.guests];
  }

  async guests(node: NodeRef): Promise<GuestListing | null> {
    const cache = this.node(node.id).cache;
    if (!cache?.guests) return null;
    return {
      guests: [...cache.guests],
      refreshedAt: new Date(cache.refreshedAt),
      expiresAt: new Date(cache.expiresAt),
    };
  }

  async read(node: NodeRef): Promise<VmidSnapshot> {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    this.lapse(node, s);
    return {
      version: s.version,
      cache: s.cache
        ? {
            taken: sorted(s.cache.taken),
            refreshedAt: new Date(s.cache.refreshedAt),
            expiresAt: new Date(s.cache.expiresAt),
          }
        : null,
      reserved: [...s.reservations.keys()].sort((a, b) => a - b),
      firstExpiry: firstExpiry(s.reservations.values()),
    };
  }

  async state(nodeId: string) {
    const seeding = this.seed(nodeId);
    if (seeding) await seeding;
    const s = this.node(nodeId);
    return { version: s.version, epoch: s.epoch, deleted: s.deleted };
  }

  async refresh(
    node: NodeRef,
    taken: readonly number[],
    ttlSeconds: number,
    expectedEpoch: number | null,
  ): Promise<RefreshOutcome> {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    if (s.deleted) throw new NotFoundError('Node', node.id);
    if (expectedEpoch !== null && expectedEpoch !== s.epoch) return { written: false, version: s.version };
    this.lapse(node, s);
    const now = this.now();
    const set = new Set(taken);
    const list = sorted(set);
    // Guests the set as last written had and this one lacks went: held (also after the cache
    // expired or was invalidated: `last` outlives it). Never filled: nothing to compare with.
    // What changed against the set as last written (never written: all of it is new).
    const previous = s.last;
    const before = new Set(previous ?? []);
    const delta = { added: list.filter((v) => !before.has(v)), removed: (previous ?? []).filter((v) => !set.has(v)) };
    if (previous && this.holdMs > 0) this.hold(s, delta.removed, now, false);
    s.last = list;
    this.sweepHolds(s);
    const used = sorted(new Set([...list, ...s.reservations.keys(), ...s.held.keys()]));
    s.cache = { taken: set, used, refreshedAt: now, expiresAt: now + ttlSeconds * 1000 };
    const digest = list.join(',');
    const changed = digest !== s.digest;
    if (changed) {
      s.digest = digest;
      this.bump(node, s, 'REFRESHED', null, undefined, delta);
    }
    return { written: true, changed, snapshot: (await this.read(node)) as FilledSnapshot };
  }

  async refreshSet(node: NodeRef, taken: readonly number[], ttlSeconds: number, expectedEpoch: number | null) {
    return setOutcome(await this.refresh(node, taken, ttlSeconds, expectedEpoch));
  }

  async isCached(node: NodeRef) {
    return (await this.read(node)).cache !== null;
  }

  async invalidate(node: NodeRef) {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    if (s.deleted) throw new NotFoundError('Node', node.id);
    const existed = s.cache !== null;
    s.cache = null;
    s.digest = null;
    s.epoch += 1;
    return { existed, version: this.bump(node, s, 'INVALIDATED', null) };
  }

  async reserveMany(node: NodeRef, requests: readonly ReserveRequest[]): Promise<ReserveOutcome[]> {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    const cache = s.cache;
    if (!cache) return requests.map(() => ({ status: 'miss' }));
    this.lapse(node, s);
    this.sweepHolds(s);
    const now = this.now();
    const out: ReserveOutcome[] = [];
    /** The reservations made, by expiry: one RESERVED event each. */
    const byExpiry = new Map<number, number[]>();
    for (const request of requests) {
      let vmid: number;
      if (request.vmid !== null) {
        vmid = request.vmid;
        if (cache.taken.has(vmid)) {
          out.push({ status: 'taken', vmid });
          continue;
        }
        if (s.reservations.has(vmid)) {
          out.push({ status: 'already-reserved', vmid });
          continue;
        }
      } else {
        vmid = lowestUnused(cache.used, request.min);
        if (vmid > request.max) {
          out.push({ status: 'exhausted' });
          continue;
        }
      }
      const expiresAt = now + request.ttlSeconds * 1000;
      s.reservations.set(vmid, { until: expiresAt, owner: request.owner });
      s.nextDue = Math.min(s.nextDue, expiresAt);
      insertSorted(cache.used, vmid);
      byExpiry.set(expiresAt, [...(byExpiry.get(expiresAt) ?? []), vmid]);
      out.push({ status: 'reserved', vmid, expiresAt: new Date(expiresAt), version: 0 });
    }
    const versions = new Map<number, number>();
    for (const [expiresAt, vmids] of byExpiry) {
      versions.set(
        expiresAt,
        this.bump(
          node,
          s,
          'RESERVED',
          [...vmids].sort((a, b) => a - b),
          expiresAt,
        ),
      );
    }
    for (const o of out) if (o.status === 'reserved') o.version = versions.get(o.expiresAt.getTime())!;
    return out;
  }

  async nextFree(node: NodeRef, min: number, max: number): Promise<NextFreeOutcome> {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    if (!s.cache) return { status: 'miss' };
    this.lapse(node, s);
    this.sweepHolds(s);
    const vmid = lowestUnused(s.cache.used, min);
    return vmid > max ? { status: 'exhausted' } : { status: 'free', vmid };
  }

  async release(node: NodeRef, vmid: number, owner: string) {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    this.lapse(node, s);
    if (s.reservations.get(vmid)?.owner !== owner) return false;
    s.reservations.delete(vmid);
    this.unreserve(s, vmid, this.now());
    this.bump(node, s, 'RELEASED', [vmid]);
    return true;
  }

  async settleRefused(node: NodeRef, refused: readonly RefusedReservation[]): Promise<void> {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    if (s.deleted) return;
    this.lapse(node, s);
    const now = this.now();
    const ended: number[] = [];
    for (const { refused: r, row } of refused) {
      const held = s.reservations.get(r.vmid);
      const isRefused = held?.owner === r.owner && held.until === r.expiresAt.getTime();
      if ((isRefused || !held) && row && row.expiresAt.getTime() > now) {
        s.reservations.set(r.vmid, { until: row.expiresAt.getTime(), owner: row.owner });
        s.nextDue = Math.min(s.nextDue, row.expiresAt.getTime());
        if (s.cache) insertSorted(s.cache.used, r.vmid);
      } else if (isRefused) {
        s.reservations.delete(r.vmid);
        this.unreserve(s, r.vmid, now);
        ended.push(r.vmid);
      }
    }
    ended.sort((a, b) => a - b);
    if (ended.length > 0) this.bump(node, s, 'RELEASED', ended);
  }

  async consume(node: NodeRef, vmid: number) {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    this.lapse(node, s);
    const released = s.reservations.delete(vmid);
    const added = s.cache !== null && !s.cache.taken.has(vmid);
    if (added && s.cache) {
      s.cache.taken.add(vmid);
      insertSorted(s.cache.used, vmid);
      const list = sorted(s.cache.taken);
      s.digest = list.join(',');
      s.last = list;
      // A fill that read the set (or the registered containers) before it joined is not written over it.
      s.epoch += 1;
      this.bump(node, s, 'REFRESHED', null, undefined, { added: [vmid], removed: [] });
    } else if (released) {
      this.bump(node, s, 'RELEASED', [vmid]);
    }
    return { released, added };
  }

  async expireDue(node: NodeRef) {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    this.lapse(node, s);
    let next = Infinity;
    for (const { until } of s.reservations.values()) next = Math.min(next, until);
    return { nextInMs: next === Infinity ? null : Math.max(0, next - this.now()) };
  }

  /** As FORGET: DELETED, then a tombstone that refresh and invalidate refuse. */
  async holder(node: NodeRef, vmid: number) {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const held = this.node(node.id).reservations.get(vmid);
    return held && held.until > this.now() ? { owner: held.owner, expiresAt: new Date(held.until) } : null;
  }

  async announceGone(node: NodeRef, registrationId: string) {
    const s = this.node(node.id);
    const event: VmidEvent = {
      nodeId: node.id,
      kind: 'DELETED',
      version: s.version,
      at: new Date(this.now()),
      vmids: null,
      added: [],
      removed: [],
      registration: registrationId,
    };
    for (const listener of [...(this.listeners.get(node.id) ?? [])]) {
      try {
        listener(event);
      } catch {
        // A subscriber's failure must not block the others.
      }
    }
  }

  async forget(node: NodeRef) {
    const seeding = this.seed(node.id);
    if (seeding) await seeding;
    const s = this.node(node.id);
    if (s.deleted) return;
    this.bump(node, s, 'DELETED', null);
    Object.assign(s, {
      cache: null,
      reservations: new Map(),
      nextDue: Infinity,
      digest: null,
      lock: null,
      deleted: true,
      held: new Map(),
      nextHoldEnd: Infinity,
      last: null,
    });
  }

  /** As REVIVE: the tombstone ends; the version goes on, the epoch grows, nothing is announced. */
  async revive(node: NodeRef) {
    const s = this.node(node.id);
    if (!s.deleted) return;
    s.deleted = false;
    s.epoch += 1;
  }

  async eventsAfter(node: NodeRef, version: number) {
    const s = this.node(node.id);
    return { version: s.version, events: s.log.filter((e) => e.version > version) };
  }

  async tryLock(nodeId: string, ttlMs: number) {
    const s = this.node(nodeId);
    const now = this.now();
    if (s.lock && s.lock.until > now) return null;
    s.lock = { token: randomUUID(), until: now + ttlMs };
    return s.lock.token;
  }

  async unlock(nodeId: string, token: string) {
    const s = this.nodes.get(nodeId);
    if (s?.lock?.token === token) s.lock = null;
  }

  async isLocked(nodeId: string) {
    const lock = this.nodes.get(nodeId)?.lock;
    return lock != null && lock.until > this.now();
  }

  private readonly registrationListeners = new Map<string, Set<(node: NodeRef) => void>>();

  async announceRegistration(node: NodeRef) {
    for (const listener of [...(this.registrationListeners.get(node.userId) ?? [])]) {
      try {
        listener(node);
      } catch {
        // One subscriber's failure must not keep the others from hearing it.
      }
    }
  }

  async listenRegistrations(userId: string, onNode: (node: NodeRef) => void) {
    let set = this.registrationListeners.get(userId);
    if (!set) this.registrationListeners.set(userId, (set = new Set()));
    const listener = (n: NodeRef) => onNode(n);
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.registrationListeners.delete(userId);
    };
  }

  async listen(userId: string, onEvent: (event: VmidEvent) => void) {
    let set = this.listeners.get(userId);
    if (!set) this.listeners.set(userId, (set = new Set()));
    // A wrapper per call, so the same function listening twice is two listeners.
    const listener = (e: VmidEvent) => onEvent(e);
    set.add(listener);
    return () => {
      const current = this.listeners.get(userId);
      if (!current) return;
      current.delete(listener);
      if (current.size === 0) this.listeners.delete(userId);
    };
  }

  /** Local listeners (tests check that unsubscribing leaves none behind). */
  listenerCount(userId?: string): number {
    if (userId !== undefined) return this.listeners.get(userId)?.size ?? 0;
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }

  async close() {
    this.listeners.clear();
  }
}

/** When the first of these reservations lapses (null: none). */
function firstExpiry(reservations: Iterable<{ until: number }>): Date | null {
  let first = Infinity;
  for (const r of reservations) first = Math.min(first, r.until);
  return first === Infinity ? null : new Date(first);
}

function sorted(values: Iterable<number>): number[] {
  return [...values].sort((a, b) => a - b);
}

/** A reservation ended: its VMID leaves the used list unless a guest has it too. */
function unuse(s: NodeState, vmid: number): void {
  if (s.cache && !s.cache.taken.has(vmid)) removeSorted(s.cache.used, vmid);
}

/** The first index whose value is ≥ v. */
function lowerBound(list: readonly number[], v: number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (list[mid]! < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function insertSorted(list: number[], v: number): void {
  const i = lowerBound(list, v);
  if (list[i] !== v) list.splice(i, 0, v);
}

function removeSorted(list: number[], v: number): void {
  const i = lowerBound(list, v);
  if (list[i] === v) list.splice(i, 1);
}

/**
 * The lowest value ≥ min not in `used` (ascending, each once), by binary search: the values
 * from min on are u(0) < u(1) < …, so u(i) ≥ min + i, equal exactly when min … min + i are
 * all used. The answer is min + the first i where they differ (or the count, if none does).
 */
export function lowestUnused(used: readonly number[], min: number): number {
  const base = lowerBound(used, min);
  let lo = 0;
  let hi = used.length - base;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (used[base + mid] === min + mid) lo = mid + 1;
    else hi = mid;
  }
  return min + lo;
}
