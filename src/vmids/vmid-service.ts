import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { lruCache } from '../cache/lru.js';
import { ConflictError, FailedPreconditionError, NotFoundError } from '../errors.js';
import { CacheUnavailableError } from './errors.js';
import { EventStream } from './event-stream.js';
import { LapseSweeper } from './lapse-sweeper.js';
import { checkReservationKey, type KeyEntry, type ReservationKeys } from './reservation-keys.js';
import { type CachedSet, type FilledSnapshot, type Guest, type VmidSnapshot, type VmidStore } from './store.js';
import { type NodeRef, VMID_MAX, VMID_MIN, type VmidEvent, type VmidReservation, type VmidSet } from './types.js';
import { checkMin, checkTtlSeconds, checkVmid, DEFAULT_RESERVATION_TTL_S } from './validation.js';
import { SingleFlight } from '../concurrency/single-flight.js';

/**
 * Asks Proxmox which VMIDs exist on the node's cluster (errors: DomainErrors, PROXMOX_*): the
 * taken set, and the guest listing it came from (kept with the set: `guests`). A plain list of
 * VMIDs (stand-ins in tests) leaves no listing: `guests` then fails.
 */
export type FetchTakenVmids = (node: NodeRef) => Promise<VmidListing | number[]>;

/**
 * One fill's answer. `taken`: every VMID in use (the guests, and registered containers that
 * Proxmox does not list yet: taken, but no guests). `guests`: what Proxmox listed, in
 * ProxmoxClient.guests' shape (node '' and missing names mean unknown).
 */
export interface VmidListing {
  taken: number[];
  guests: ReadonlyArray<{ vmid: number; type: 'qemu' | 'lxc'; name?: string | null | undefined; node?: string | null | undefined; status?: string | null | undefined }>;
}

/** A fetch's answer as the service keeps it: `guests` null when the fetch listed none. */
interface Fetched {
  taken: number[];
  guests: Guest[] | null;
}

/** VMIDs from `lower` (inclusive) to `upper` (exclusive). */
export interface VmidRange {
  lower: number;
  upper: number;
}

/**
 * What only Proxmox can say about a VMID at this moment, whatever the cached listing holds
 * (errors: DomainErrors, PROXMOX_*).
 */
export interface VmidAuthority {
  /** Is `vmid` free in the whole cluster now (GET /cluster/nextid?vmid=N; "already exists": false)? */
  isFree(node: NodeRef, vmid: number): Promise<boolean>;
  /** The datacenter's `next-id` range, null when none is set (or the token may not read it). */
  nextIdRange(node: NodeRef): Promise<VmidRange | null>;
}

export interface VmidServiceOptions {
  store: VmidStore;
  fetchTakenVmids: FetchTakenVmids;
  authority: VmidAuthority;
  /** VMID_CACHE_TTL_S */
  cacheTtlSeconds: number;
  log?: Logger;
  /**
   * How long one filler may hold a node's fill lock. Longer than a Proxmox request can take
   * (PROXMOX_TIMEOUT_MS), so a slow but live filler is not overtaken. Default 15 s.
   */
  fillLockMs?: number;
  /** How long a request waits for another instance's fill before asking Proxmox itself. Default: fillLockMs. */
  fillWaitMs?: number;
  /** How often a waiting request looks for the other instance's result. Default 25 ms. */
  fillPollMs?: number;
  /** Told whether each getCachedVmids was served from the cache (metrics). */
  onLookup?: (hit: boolean) => void;
  /**
   * Told when a space gains local subscribers (node: a registration of it that a subscription
   * covers), once per subscription and space; the returned function is called when that
   * subscription stops covering it (the cluster watcher: src/clusters/watcher.ts).
   */
  onSpaceWatched?: (node: NodeRef) => () => void;
  /** Idempotency keys of reserveVmid (`key`); without them a key answers FAILED_PRECONDITION. */
  keys?: ReservationKeys;
}

/** Retained events older than this are not replayed (a subscriber that far behind re-reads). */
const EVENT_LOG_MAX_AGE_MS = 3_600_000;

/** How often a subscription retries reading versions after a pub/sub reconnect. */
const RESYNC_RETRY_MS = 250;

/** How often a request that needs a filled cache retries after finding none. */
const FILL_ATTEMPTS = 3;

/**
 * How many candidates in a row a reservation without a vmid tries when Proxmox reports each
 * one in use (guests the cached listing does not know yet, e.g. created by Terraform a moment ago).
 */
const CONFIRM_ATTEMPTS = 5;

/** How often a keyed reservation retries when concurrent calls with its key overtake it. */
const KEY_ROUNDS = 3;

/** How long a cluster's `next-id` range is trusted (datacenter options rarely change). */
const RANGE_TTL_MS = 60_000;

/**
 * The VMIDs of a node's cluster: the cached taken set (read-through, single-flight fills),
 * atomic reservations, and live events. Callers pass a NodeRef whose ownership they checked.
 *
 * Store failures (Redis down) answer CacheUnavailableError (SERVICE_UNAVAILABLE), except
 * that getCachedVmids/refreshVmidCache fall back to asking Proxmox directly (fromCache
 * false, reservations unknown and reported as none).
 */
export class VmidService {
  private readonly store: VmidStore;
  private readonly fetchTakenVmids: FetchTakenVmids;
  private readonly authority: VmidAuthority;
  /** Each space's `next-id` range as last read, with when it stops being trusted. */
  private readonly ranges = lruCache<string, { range: VmidRange | null }>({ max: 10_000, ttlMs: RANGE_TTL_MS });
  private readonly ttlS: number;
  private readonly log: Logger | undefined;
  private readonly fillLockMs: number;
  private readonly fillWaitMs: number;
  private readonly fillPollMs: number;
  private readonly onLookup: ((hit: boolean) => void) | undefined;
  private readonly onSpaceWatched: ((node: NodeRef) => () => void) | undefined;
  private readonly keys: ReservationKeys | undefined;
  /** In-process single-flight: concurrent misses of one node share one fill. */
  private readonly fills = new SingleFlight<string, Fill>();
  /** Same for direct Proxmox reads while the store is down. */
  private readonly directReads = new Map<string, Promise<Fetched>>();
  /** The last version this process saw per node, for answers given while the store is down. */
  private readonly lastVersions = new Map<string, number>();
  /** Announces lapsed reservations of the nodes this process has subscribers of. */
  private readonly lapses: LapseSweeper;

  constructor(opts: VmidServiceOptions) {
    this.store = opts.store;
    this.fetchTakenVmids = opts.fetchTakenVmids;
    this.authority = opts.authority;
    this.ttlS = opts.cacheTtlSeconds;
    this.log = opts.log;
    this.fillLockMs = opts.fillLockMs ?? 15_000;
    this.fillWaitMs = opts.fillWaitMs ?? this.fillLockMs;
    this.fillPollMs = opts.fillPollMs ?? 25;
    this.onLookup = opts.onLookup;
    this.onSpaceWatched = opts.onSpaceWatched;
    this.keys = opts.keys;
    this.lapses = new LapseSweeper(this.store, this.log);
  }

  /** Ends subscriptions' pub/sub connection and timers of the store, and the lapse timers. */
  close(): Promise<void> {
    this.lapses.close();
    return this.store.close();
  }

  // ------------------------------------------------------------------ reads

  /** The node's set from the cache; on a miss asks Proxmox once (for all concurrent callers). */
  async getCachedVmids(node: NodeRef): Promise<VmidSet> {
    try {
      const snap = await this.store.read(spaceOf(node));
      this.onLookup?.(snap.cache !== null);
      if (snap.cache) return this.toSet(node.id, snap, true);
      const fill = await this.fill(node);
      return this.toSet(node.id, fill.snapshot, false);
    } catch (err) {
      if (!(err instanceof CacheUnavailableError)) throw err;
      return this.directSet(node, err);
    }
  }

  /**
   * Whether the node's VMID space has a cached set now (asks nobody else). The cluster watcher
   * brings only a cached set up to date when it cannot tell what changed: without one, the
   * next read asks Proxmox anyway.
   */
  async hasCachedSet(node: NodeRef): Promise<boolean> {
    return (await this.store.read(spaceOf(node))).cache !== null;
  }

  /**
   * The guests (QEMU and LXC) of the node's cluster, ascending by vmid: the listing the cached
   * set was filled from, so no Proxmox call while the set is cached. Without a cached set, or
   * with one that has no listing (written by an earlier version, or the listing was lost), asks
   * Proxmox once, sharing the fill with concurrent reads of the set, and writes set and
   * listing. Registered containers Proxmox does not list yet are taken but are no guests.
   * Store down: straight from Proxmox, as getCachedVmids.
   */
  async guests(node: NodeRef): Promise<Guest[]> {
    try {
      for (let attempt = 1; ; attempt++) {
        const snap = await this.store.read(spaceOf(node));
        const cached = snap.cache ? await this.cachedGuests(node, snap.cache) : null;
        if (cached) return cached;
        // A fill already on its way for the set alone may answer without a listing: try again.
        const fill = await this.fill(node, true);
        if (fill.guests === null) throw new Error('fetchTakenVmids answered VMIDs without a guest listing');
        if (fill.guests) return fill.guests;
        if (attempt >= FILL_ATTEMPTS) throw notFillable(node);
      }
    } catch (err) {
      if (!(err instanceof CacheUnavailableError)) throw err;
      const { guests } = await this.direct(node, err);
      if (!guests) throw new Error('fetchTakenVmids answered VMIDs without a guest listing');
      return guests;
    }
  }

  /** Always asks Proxmox, replaces the cached set (a REFRESHED event if it changed). */
  async refreshVmidCache(node: NodeRef): Promise<VmidSet> {
    let fetched: Fetched | undefined;
    try {
      // Read before Proxmox is asked (not alongside): an invalidation after this read must
      // make the write below stale, whatever Proxmox answers.
      const epoch = await this.epochOf(node);
      fetched = await this.fetch(node);
      const snapshot = await this.write(node, fetched, epoch);
      return this.toSet(node.id, snapshot, false);
    } catch (err) {
      if (!(err instanceof CacheUnavailableError)) throw err;
      return this.directSet(node, err, fetched);
    }
  }

  /**
   * Drops the cached set, so the next read asks Proxmox. Always bumps the version and
   * publishes INVALIDATED (callers invalidate because something changed in Proxmox); answers
   * whether a cached set existed.
   */
  async invalidateVmidCache(node: NodeRef): Promise<boolean> {
    const { existed, version } = await this.store.invalidate(spaceOf(node));
    this.lastVersions.set(node.id, version);
    return existed;
  }

  /** Taken by a guest or reserved. Needs the store: reservations live there. */
  async isVmidTaken(node: NodeRef, vmid: number): Promise<boolean> {
    checkVmid(vmid);
    const snap = await this.filledSnapshot(node);
    return snap.cache.taken.includes(vmid) || snap.reserved.some((r) => r.vmid === vmid);
  }

  /**
   * The lowest VMID ≥ min that is neither taken nor reserved, inside the datacenter's
   * `next-id` range when one is set: what reserveVmid without a vmid would try first. It
   * reserves nothing.
   */
  async nextFreeVmid(node: NodeRef, min: number = VMID_MIN): Promise<number> {
    checkMin(min);
    const bounds = await this.searchBounds(node, min);
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.store.nextFree(spaceOf(node), bounds.min, bounds.max);
      if (outcome.status === 'free') return outcome.vmid;
      if (outcome.status === 'exhausted') throw exhausted(bounds);
      if (attempt >= FILL_ATTEMPTS) throw notFillable(node);
      await this.fill(node);
    }
  }

  // ------------------------------------------------------------------ reservations

  /**
   * Reserves `vmid`, or without one the lowest free VMID ≥ min (inside the datacenter's
   * `next-id` range when one is set), for ttlSeconds — atomically across instances. CONFLICT
   * when the VMID is taken or reserved. The check runs against a filled cache (read-through
   * first), and then Proxmox confirms the VMID is free at this moment: one it reports in use
   * becomes taken (the cache learns it, subscribers see it) and the next candidate is tried.
   * When Proxmox cannot be asked, its PROXMOX_* error is the answer and nothing stays reserved.
   *
   * `key` (idempotent retries, see reserveKeyed): a repeated call with the same key answers
   * what the first one got instead of reserving another VMID.
   */
  async reserveVmid(
    node: NodeRef,
    vmid: number | null | undefined,
    ttlSeconds: number = DEFAULT_RESERVATION_TTL_S,
    min: number = VMID_MIN,
    key?: string | null,
  ): Promise<VmidReservation> {
    if (vmid != null) checkVmid(vmid);
    checkTtlSeconds(ttlSeconds);
    checkMin(min);
    if (key != null) return this.reserveKeyed(node, vmid, ttlSeconds, min, checkReservationKey(key));
    // An explicit vmid may lie outside the range: Proxmox's range is not a hard limit either.
    const bounds = vmid == null ? await this.searchBounds(node, min) : { min, max: VMID_MAX };
    let fills = 0;
    let refused = 0;
    for (;;) {
      const outcome = await this.store.reserve(spaceOf(node), { vmid: vmid ?? null, ...bounds, owner: node.userId, ttlSeconds });
      switch (outcome.status) {
        case 'reserved':
          if (await this.confirmedFree(node, outcome.vmid)) {
            this.lastVersions.set(node.id, outcome.version);
            return { nodeId: node.id, vmid: outcome.vmid, expiresAt: outcome.expiresAt };
          }
          if (vmid != null) throw takenError(vmid);
          if (++refused >= CONFIRM_ATTEMPTS) {
            throw new ConflictError(
              `Proxmox reported ${CONFIRM_ATTEMPTS} free-looking VMIDs in a row as in use (guests the cache did not know yet); they are recorded as taken now: try again.`,
              { min: bounds.min },
            );
          }
          break;
        case 'taken':
          throw takenError(outcome.vmid);
        case 'already-reserved':
          throw new ConflictError(`VMID ${outcome.vmid} is already reserved.`, { vmid: outcome.vmid });
        case 'exhausted':
          throw exhausted(bounds);
        case 'miss':
          if (++fills >= FILL_ATTEMPTS) throw notFillable(node);
          await this.fill(node);
      }
    }
  }

  /**
   * A reservation with an idempotency key (per VMID space, caller and key; table
   * vmid_reservation_keys). The key's entry answers, without reserving anything:
   * - while its reservation lives (still held by the caller): that reservation, same VMID and
   *   expiry (this call's ttlSeconds and min do not apply);
   * - once the reservation was consumed, i.e. the VMID is a guest: the caller registered a
   *   container with it (registerContainer), or Proxmox reports it in use (a guest created
   *   outside pvegraph, e.g. by Terraform's provider; whoever created it): the same VMID with
   *   `consumed` true and the expiry the reservation had. Nothing is reserved then.
   * Otherwise (no entry; the reservation was released or lapsed and the VMID is no guest) a
   * new reservation is made, of the key's former VMID first when it is free again (and ≥ min),
   * and recorded for the key. Two concurrent calls with one key: the one recorded first stands;
   * the other releases what it reserved and answers the first one's.
   * With a vmid, an entry that answers another VMID is a CONFLICT.
   */
  private async reserveKeyed(node: NodeRef, vmid: number | null | undefined, ttlSeconds: number, min: number, key: string): Promise<VmidReservation> {
    const keys = this.keys;
    if (!keys) throw new FailedPreconditionError('This server keeps no reservation keys: reserve without a key.');
    for (let round = 1; ; round++) {
      const entry = await keys.get(node.spaceId, node.userId, key);
      const answer = entry ? await this.keyAnswer(node, keys, entry) : null;
      if (answer) {
        if (vmid != null && vmid !== answer.vmid) {
          throw new ConflictError(`The key answers VMID ${answer.vmid}, not ${vmid}.`, { vmid: answer.vmid });
        }
        return answer;
      }
      const fresh = await this.reserveAgain(node, entry, vmid, ttlSeconds, min);
      if (await keys.claim(node.spaceId, node.userId, key, fresh, entry)) return { ...fresh, consumed: false };
      // Another call with this key was recorded first: its reservation is the answer.
      await this.bestEffort('release a reservation another call with its key overtook', () => this.releaseVmid(node, fresh.vmid));
      if (round >= KEY_ROUNDS) throw new ConflictError('Concurrent reservations with the same key kept overtaking each other: try again.', { key });
    }
  }

  /** What a key's entry answers now: its live reservation, its VMID consumed, or nothing. */
  private async keyAnswer(node: NodeRef, keys: ReservationKeys, entry: KeyEntry): Promise<VmidReservation | null> {
    const snap = await this.store.read(spaceOf(node));
    // The caller's reservation: the one the entry recorded (its expiry to the millisecond).
    if (snap.reserved.some((r) => r.vmid === entry.vmid && r.expiresAt.getTime() === entry.expiresAt.getTime())) {
      return { nodeId: node.id, vmid: entry.vmid, expiresAt: entry.expiresAt, consumed: false };
    }
    if (snap.reserved.some((r) => r.vmid === entry.vmid)) return null; // someone else's now
    const guest = (await keys.registered(node.spaceId, node.userId, entry.vmid)) || !(await this.authority.isFree(node, entry.vmid));
    return guest ? { nodeId: node.id, vmid: entry.vmid, expiresAt: entry.expiresAt, consumed: true } : null;
  }

  /** A new reservation for a key: its former VMID again when that is free, else as asked. */
  private async reserveAgain(node: NodeRef, entry: KeyEntry | null, vmid: number | null | undefined, ttlSeconds: number, min: number): Promise<VmidReservation> {
    if (vmid == null && entry && entry.vmid >= min) {
      try {
        return await this.reserveVmid(node, entry.vmid, ttlSeconds, min);
      } catch (err) {
        if (!(err instanceof ConflictError)) throw err;
      }
    }
    return this.reserveVmid(node, vmid, ttlSeconds, min);
  }

  /**
   * Asks Proxmox whether the VMID just reserved is free now. In use: it becomes taken (the
   * reservation ends, the cached set gains it: REFRESHED). Proxmox could not be asked: the
   * reservation ends and the PROXMOX_* error is the answer.
   */
  private async confirmedFree(node: NodeRef, vmid: number): Promise<boolean> {
    let free: boolean;
    try {
      free = await this.authority.isFree(node, vmid);
    } catch (err) {
      await this.bestEffort('end an unconfirmed reservation', () => this.store.release(spaceOf(node), vmid, node.userId));
      throw err;
    }
    if (!free) await this.bestEffort('record a VMID Proxmox reports in use', () => this.store.consume(spaceOf(node), vmid));
    return free;
  }

  /** [min, max] for a search without a vmid: inside the datacenter's `next-id` range, if set. */
  private async searchBounds(node: NodeRef, min: number): Promise<{ min: number; max: number }> {
    let known = this.ranges.get(node.spaceId);
    if (!known) {
      known = { range: await this.authority.nextIdRange(node) };
      this.ranges.set(node.spaceId, known);
    }
    if (!known.range) return { min, max: VMID_MAX };
    return { min: Math.max(min, known.range.lower), max: Math.min(VMID_MAX, known.range.upper - 1) };
  }

  /**
   * Ends the caller's reservation early; false when there was none (or it had expired), and
   * equally when another user of the cluster holds it: only its owner can release it.
   */
  async releaseVmid(node: NodeRef, vmid: number): Promise<boolean> {
    checkVmid(vmid);
    return this.store.release(spaceOf(node), vmid, node.userId);
  }

  /**
   * A guest/container was created for `vmid`: its reservation ends and, if the node's set is
   * cached, the VMID joins the taken set (REFRESHED), so it stays unavailable until the next
   * refresh sees the guest.
   */
  async consumeReservation(node: NodeRef, vmid: number): Promise<{ released: boolean; added: boolean }> {
    checkVmid(vmid);
    return this.store.consume(spaceOf(node), vmid);
  }

  // ------------------------------------------------------------------ hooks of node management

  /**
   * registerContainer may record `vmid` for the caller: CONFLICT while another user holds a
   * reservation of it on the cluster (registering would end their reservation).
   */
  async assertRegistrable(node: NodeRef, vmid: number): Promise<void> {
    checkVmid(vmid);
    let owner: string | null;
    try {
      owner = await this.store.holder(spaceOf(node), vmid);
    } catch (err) {
      // Redis down: registrations still succeed (the README's promise); nothing can be checked.
      if (err instanceof CacheUnavailableError) return;
      throw err;
    }
    if (owner !== null && owner !== node.userId) {
      throw new ConflictError(`VMID ${vmid} is reserved by another user of this node's cluster.`, { vmid });
    }
  }

  /**
   * registerContainer: the reservation of `vmid` is used up and the VMID joins the cached set
   * (REFRESHED). It stays taken until the container is unregistered: every fill adds the
   * registered containers to what Proxmox lists. With no cached set the cache is invalidated
   * instead, so a fill already on its way (it may have read the containers before this one)
   * is not written. Best effort: the container is recorded already.
   */
  async containerRegistered(node: NodeRef, vmid: number): Promise<void> {
    let added = false;
    await this.bestEffort('consume a reservation', async () => {
      added = (await this.consumeReservation(node, vmid)).added;
    });
    if (!added) await this.bestEffort('invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /** unregisterContainer: the guest may be gone or still there; the next read asks Proxmox. */
  async containerUnregistered(node: NodeRef, _vmid: number): Promise<void> {
    await this.bestEffort('invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /** Host, port or credentials changed: the cached set may be another cluster's. */
  async nodeConnectionChanged(node: NodeRef): Promise<void> {
    await this.bestEffort('invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /**
   * A registration was created. Its VMID space may be a tombstone (the cluster's last
   * registration was deleted within the day, forget): it is revived, so its VMIDs work again;
   * its version goes on from the DELETED event's. Best effort: the registration is recorded
   * already (should this fail, the space answers NOT_FOUND until its tombstone ends).
   */
  async nodeCreated(node: NodeRef): Promise<void> {
    await this.bestEffort('revive the VMID space', () => this.store.revive(spaceOf(node)));
    await this.bestEffort('announce the registration', () => this.store.announceRegistration(node));
  }

  /**
   * The registration is gone. With the last registration of its VMID space the space goes
   * too: cache and reservations dropped, DELETED announced, its version kept as a tombstone
   * (forget). While other registrations of the cluster (of any user) remain, the space stays
   * as it is: they go on using it, and only the deleted registration's subscribers are told
   * DELETED (announceGone).
   */
  async nodeDeleted(node: NodeRef, lastOfSpace = true): Promise<void> {
    this.lastVersions.delete(node.id);
    if (!lastOfSpace) {
      await this.bestEffort('announce the deleted registration', () => this.store.announceGone(spaceOf(node), node.id));
      return;
    }
    await this.bestEffort('forget the node', () => this.store.forget(spaceOf(node)));
  }

  /**
   * The caller's database change has committed: it stands whatever happens here (failing
   * the request now would make a client retry something that succeeded). While Redis is down
   * the TTLs bound what stays stale. A node deleted meanwhile (by a concurrent request) has
   * nothing left to update. Anything else is a bug worth an error log.
   */
  private async bestEffort(what: string, op: () => Promise<unknown>): Promise<void> {
    try {
      await op();
    } catch (err) {
      if (err instanceof CacheUnavailableError) this.log?.warn({ err: { message: err.message } }, `could not ${what}: VMID cache unavailable`);
      else if (err instanceof NotFoundError) this.log?.debug(`did not ${what}: the node was deleted meanwhile`);
      else this.log?.error({ err }, `could not ${what}`);
    }
  }

  // ------------------------------------------------------------------ events

  /**
   * Events of one node; the first is SYNC with its VMID space's current version. With
   * `afterVersion`, first every retained event with a greater version, in order, then live:
   * nothing before them when none was missed; SYNC instead when they are no longer all kept
   * (more than EVENT_LOG_KEEP changes, older than EVENT_LOG_MAX_AGE_MS, or Redis lost them).
   */
  subscribeNode(node: NodeRef, afterVersion?: number): AsyncIterableIterator<VmidEvent> {
    return this.subscribe([node], true, afterVersion);
  }

  /**
   * Events of every node of a user (those in `nodes`: the user's registrations when the
   * subscription starts); first one SYNC per node.
   */
  subscribeUser(userId: string, nodes: readonly NodeRef[]): AsyncIterableIterator<VmidEvent> {
    return this.subscribe(nodes, false, undefined, userId);
  }

  /**
   * The store publishes each change once per VMID space (cluster), named by the space; each
   * registration of the subscriber in that space receives it under its own id. Versions,
   * floors and DELETED are the space's.
   */
  private subscribe(nodes: readonly NodeRef[], single: boolean, afterVersion?: number, followUser?: string): AsyncIterableIterator<VmidEvent> {
    const store = this.store;
    const lapses = this.lapses;
    const onSpaceWatched = this.onSpaceWatched;
    // space → the subscriber's registrations in it
    const registrations = new Map<string, string[]>();
    for (const node of nodes) {
      const ids = registrations.get(node.spaceId) ?? [];
      if (!ids.includes(node.id)) ids.push(node.id);
      registrations.set(node.spaceId, ids);
    }
    const spaces = [...registrations.keys()];
    return new EventStream<VmidEvent>(async (push, stop) => {
      // Until the SYNCs are out, live events wait here; afterwards an event passes only if it
      // is newer than what this subscriber has been told (so nothing is lost or repeated
      // between "listening" and "read the version").
      let floors: Map<string, number> | null = null;
      const early: VmidEvent[] = [];
      // The spaces this subscription covers, watched for lapsing reservations (and, through
      // onSpaceWatched, for guests created or destroyed behind pvegraph's back).
      const watched = new Map<string, () => void>();
      // Spaces whose DELETED was delivered: nothing more comes of them.
      const deleted = new Set<string>();
      const watch = (spaceId: string) => {
        if (watched.has(spaceId) || deleted.has(spaceId)) return;
        const unwatchLapses = lapses.watch(spaceRef(spaceId));
        const first = nodes.find((n) => n.spaceId === spaceId);
        const unwatchSpace = first && onSpaceWatched ? onSpaceWatched(first) : undefined;
        watched.set(spaceId, () => {
          unwatchLapses();
          unwatchSpace?.();
        });
      };
      const deliver = (event: VmidEvent) => {
        const space = event.nodeId;
        if (!registrations.has(space)) return;
        // Nothing follows a space's DELETED (an instance of an earlier version, during a rolling
        // upgrade, may still write a deleted node's keys: its events are not passed on).
        if (deleted.has(space)) return;
        if (event.kind === 'RESERVED') lapses.observe(event);
        if (!floors) {
          early.push(event);
          return;
        }
        if (event.registration !== undefined) {
          registrationGone(space, event);
          return;
        }
        if (event.version <= (floors.get(space) ?? 0)) return;
        floors.set(space, event.version);
        sendAs(space, event);
        if (event.kind === 'DELETED') ended(space);
      };
      /**
       * One registration of a shared space was deleted: its subscribers are told DELETED (at
       * the space's version, which this does not change) and get nothing more of it; the
       * space goes on for the subscriber's other registrations of it.
       */
      const registrationGone = (space: string, event: VmidEvent) => {
        const ids = registrations.get(space) ?? [];
        const gone = event.registration!;
        if (!ids.includes(gone)) return;
        send({ ...event, nodeId: gone, version: Math.max(event.version, floors?.get(space) ?? 0) });
        const left = ids.filter((id) => id !== gone);
        if (left.length > 0) {
          registrations.set(space, left);
          return;
        }
        registrations.delete(space);
        ended(space);
      };
      /** The space's DELETED went out: nothing more comes of it. */
      const ended = (spaceId: string) => {
        deleted.add(spaceId);
        watched.get(spaceId)?.();
        watched.delete(spaceId);
        // A node's own subscription has nothing left to follow: it completes.
        if (single) stop();
      };
      /** The space's first event, or the one after an outage: SYNC, or DELETED if it is gone. */
      const announce = (known: Map<string, number>, spaceId: string, state: { version: number; deleted: boolean }) => {
        known.set(spaceId, state.version);
        sendAs(spaceId, stateEvent(spaceId, state.deleted ? 'DELETED' : 'SYNC', state.version));
        if (state.deleted) ended(spaceId);
      };
      /** One copy per registration of the subscriber in the space, under its id. */
      const sendAs = (spaceId: string, event: VmidEvent) => {
        for (const nodeId of registrations.get(spaceId) ?? []) send(labelled(event, nodeId));
      };
      // A consumer that stopped reading (EventStream allows 1024 pending events) is ended with
      // an error rather than silently losing events.
      const send = (event: VmidEvent) => {
        try {
          push(event);
        } catch (err) {
          stop(err);
        }
      };
      // Back from a pub/sub outage: events may have been missed; a SYNC with a newer version
      // tells the subscriber to re-read. The command connection may come back later than the
      // pub/sub one, so reading the versions is retried while the subscription lasts.
      let active = true;
      let resyncing = false;
      const resync = async () => {
        if (resyncing) return;
        resyncing = true;
        try {
          for (let attempt = 0; active && floors; attempt++) {
            try {
              for (const spaceId of [...floors.keys()]) {
                if (deleted.has(spaceId)) continue;
                const state = await store.state(spaceId);
                // Its DELETED may have arrived while the state was read.
                if (!active || deleted.has(spaceId)) continue;
                // Not only "newer": a Redis that lost its data (restart without persistence,
                // failover) starts versions again; the lower floor lets new events through.
                // A space deleted during the outage: its DELETED was missed, its tombstone says so.
                if (state.deleted || state.version !== (floors.get(spaceId) ?? 0)) announce(floors, spaceId, state);
              }
              // A RESERVED missed meanwhile did not move its space's lapse timer.
              if (active) lapses.resweep(watched.keys());
              return;
            } catch (err) {
              if (attempt === 0) this.log?.warn({ err: { message: (err as Error).message } }, 'vmid events: resync delayed');
              await sleep(RESYNC_RETRY_MS);
            }
          }
        } finally {
          resyncing = false;
        }
      };

      const unlisten: Array<() => void> = [];
      /**
       * A node the user registered after subscribing (every node of theirs): followed from
       * its first change on, as the others (no SYNC).
       */
      const registered = async (ref: NodeRef) => {
        if (!active) return;
        const ids = registrations.get(ref.spaceId);
        if (ids) {
          if (!ids.includes(ref.id)) ids.push(ref.id);
          return;
        }
        registrations.set(ref.spaceId, [ref.id]);
        deleted.delete(ref.spaceId);
        try {
          const stopListening = await store.listen(ref.spaceId, deliver, () => void resync());
          if (!active) return stopListening();
          unlisten.push(stopListening);
          const { version } = await store.state(ref.spaceId);
          if (floors && !floors.has(ref.spaceId)) floors.set(ref.spaceId, version);
          watch(ref.spaceId);
        } catch (err) {
          this.log?.warn({ err: { message: (err as Error).message } }, 'vmid events: could not follow a new node; subscribe again');
        }
      };
      try {
        if (followUser !== undefined) unlisten.push(await store.listenRegistrations(followUser, (ref) => void registered(ref)));
        for (const spaceId of spaces) unlisten.push(await store.listen(spaceId, deliver, () => void resync()));
        const states = await Promise.all(spaces.map(async (id) => [id, await store.state(id)] as const));
        const replays = await Promise.all(spaces.map((id) => (afterVersion === undefined ? null : this.replayable(id, afterVersion))));
        floors = new Map();
        for (const [i, [spaceId, state]] of states.entries()) {
          const replay = replays[i];
          if (!replay) {
            announce(floors, spaceId, state);
            continue;
          }
          // Resumed: what was missed, in order; the floor is where the replay ends.
          floors.set(spaceId, replay.version);
          for (const event of replay.events) {
            sendAs(spaceId, event);
            if (event.kind === 'DELETED') ended(spaceId);
          }
        }
        for (const event of early.splice(0)) deliver(event);
        for (const spaceId of spaces) watch(spaceId);
      } catch (err) {
        for (const u of unlisten) u();
        for (const unwatch of watched.values()) unwatch();
        stop(err);
        return;
      }
      await stop;
      active = false;
      for (const u of unlisten) u();
      for (const unwatch of watched.values()) unwatch();
    });
  }

  /**
   * The retained events of the space after `afterVersion`, when they are all there: every
   * version from afterVersion + 1 to the current one, none older than EVENT_LOG_MAX_AGE_MS.
   * null when the subscriber must start over (SYNC).
   */
  private async replayable(spaceId: string, afterVersion: number): Promise<{ version: number; events: VmidEvent[] } | null> {
    const { version, events } = await this.store.eventsAfter(spaceRef(spaceId), afterVersion);
    if (afterVersion > version) return null;
    const oldest = Date.now() - EVENT_LOG_MAX_AGE_MS;
    for (const [i, event] of events.entries()) {
      if (event.version !== afterVersion + 1 + i || event.at.getTime() < oldest) return null;
    }
    if (afterVersion + events.length !== version) return null;
    return { version, events };
  }

  /** Nodes with a lapse timer (tests: none is left once their subscriptions end). */
  nodesWatchedForLapses(): number {
    return this.lapses.watchedCount();
  }

  // ------------------------------------------------------------------ filling

  /**
   * Fills the node's cache from Proxmox with at most one Proxmox call at a time per node:
   * in this process through `fills`, across instances through the store's fill lock. A
   * request that finds the lock taken waits for the holder's result (polling the cache);
   * if the holder gives up without filling it tries to take over, and after fillWaitMs it
   * asks Proxmox itself rather than fail.
   */
  private fill(node: NodeRef, withGuests = false): Promise<Fill> {
    return this.fills.run(node.spaceId, () => this.fillOnce(node, withGuests));
  }

  /**
   * `withGuests`: a cached set is not enough, its guest listing must be there too (a set
   * written by an earlier version keeps none); without it Proxmox is asked (the set is
   * written again with the listing).
   */
  private async fillOnce(node: NodeRef, withGuests: boolean): Promise<Fill> {
    const deadline = Date.now() + this.fillWaitMs;
    for (;;) {
      const token = await this.store.tryLock(node.spaceId, this.fillLockMs);
      if (token) {
        try {
          const epoch = await this.epochOf(node);
          // Someone may have filled between our miss and our lock.
          const current = await this.store.read(spaceOf(node));
          const done = await this.filled(node, current, withGuests);
          if (done) return done;
          return await this.fetchAndWrite(node, epoch);
        } finally {
          await this.store.unlock(node.spaceId, token).catch(() => undefined);
        }
      }
      while (Date.now() < deadline) {
        await sleep(this.fillPollMs);
        const done = await this.filled(node, await this.store.read(spaceOf(node)), withGuests);
        if (done) return done;
        if (!(await this.store.isLocked(node.spaceId))) break;
      }
      if (Date.now() >= deadline) {
        this.log?.warn({ nodeId: node.id }, 'vmid cache: gave up waiting for another instance to fill; asking Proxmox');
        return this.fetchAndWrite(node, await this.epochOf(node));
      }
    }
  }

  /**
   * The node's invalidation epoch, read before Proxmox is asked. NOT_FOUND when the node was
   * deleted (through another instance that answered for it from its ownership cache): Proxmox
   * is not asked, and the store would refuse the write anyway.
   */
  private async epochOf(node: NodeRef): Promise<number> {
    const { epoch, deleted } = await this.store.state(node.spaceId);
    if (deleted) throw new NotFoundError('Node', node.id);
    return epoch;
  }

  /** What a fill answers when the set (and, `withGuests`, its listing) is cached; else null. */
  private async filled(node: NodeRef, snap: VmidSnapshot, withGuests: boolean): Promise<Fill | null> {
    if (!snap.cache) return null;
    if (!withGuests) return { snapshot: snap, written: true };
    const guests = await this.cachedGuests(node, snap.cache);
    return guests ? { snapshot: snap, written: true, guests } : null;
  }

  private async fetchAndWrite(node: NodeRef, epoch: number): Promise<Fill> {
    const fetched = await this.fetch(node);
    const snapshot = await this.write(node, fetched, epoch);
    return { snapshot, written: snapshot.cache !== null, guests: fetched.guests };
  }

  /** Asks Proxmox (fetchTakenVmids); the listing ascending by vmid, in the store's shape. */
  private async fetch(node: NodeRef): Promise<Fetched> {
    const answer = await this.fetchTakenVmids(node);
    if (Array.isArray(answer)) return { taken: answer, guests: null };
    const guests = answer.guests.map(
      (g): Guest => ({ vmid: g.vmid, type: g.type, name: g.name ?? null, node: g.node || null, status: g.status || null }),
    );
    return { taken: answer.taken, guests: guests.sort((a, b) => a.vmid - b.vmid) };
  }

  /** The cached set's listing: one kept with that write or a later one (an earlier one is stale). */
  private async cachedGuests(node: NodeRef, cache: CachedSet): Promise<Guest[] | null> {
    const listing = await this.store.guests(spaceOf(node));
    return listing && listing.refreshedAt.getTime() >= cache.refreshedAt.getTime() ? listing.guests : null;
  }

  /**
   * Writes a fetched set unless the cache was invalidated meanwhile; then the answer is the
   * fetched set itself (true when Proxmox was asked) and the cache stays empty.
   */
  private async write(node: NodeRef, fetched: Fetched, epoch: number): Promise<FilledSnapshot | VmidSnapshot> {
    const taken = fetched.taken;
    const outcome = await this.store.refresh(spaceOf(node), taken, this.ttlS, epoch);
    if (outcome.written) {
      const { guests } = fetched;
      const { refreshedAt, expiresAt } = outcome.snapshot.cache;
      // Without it the next guests read asks Proxmox again: not worth failing the fill for.
      if (guests) await this.bestEffort('keep the guest listing', () => this.store.putGuests(spaceOf(node), { guests, refreshedAt, expiresAt }));
      return outcome.snapshot;
    }
    const snap = await this.store.read(spaceOf(node));
    if (snap.cache) return snap;
    const at = new Date();
    return {
      ...snap,
      cache: { taken: [...new Set(taken)].sort((a, b) => a - b), refreshedAt: at, expiresAt: at },
    };
  }

  /** A snapshot with a filled cache, filling it first if needed. */
  private async filledSnapshot(node: NodeRef): Promise<FilledSnapshot> {
    for (let attempt = 1; ; attempt++) {
      const snap = await this.store.read(spaceOf(node));
      if (snap.cache) return snap as FilledSnapshot;
      const fill = await this.fill(node);
      if (fill.snapshot.cache) return fill.snapshot as FilledSnapshot;
      if (attempt >= FILL_ATTEMPTS) throw notFillable(node);
    }
  }

  // ------------------------------------------------------------------ store down

  /** Straight from Proxmox: nothing cached, reservations unknown (reported as none). */
  private async directSet(node: NodeRef, cause: CacheUnavailableError, fetched?: Fetched): Promise<VmidSet> {
    const taken = [...new Set((await this.direct(node, cause, fetched)).taken)].sort((a, b) => a - b);
    const now = new Date();
    return {
      nodeId: node.id,
      taken,
      reserved: [],
      fromCache: false,
      refreshedAt: now,
      expiresAt: now,
      version: this.lastVersions.get(node.id) ?? 0,
    };
  }

  /** Asks Proxmox once for all concurrent callers while the store is down (or answers `fetched`). */
  private direct(node: NodeRef, cause: CacheUnavailableError, fetched?: Fetched): Promise<Fetched> {
    this.log?.warn({ nodeId: node.id, err: { message: cause.message } }, 'vmid cache unavailable: answering from Proxmox directly');
    let pending = fetched ? Promise.resolve(fetched) : this.directReads.get(node.spaceId);
    if (!pending) {
      pending = this.fetch(node).finally(() => this.directReads.delete(node.spaceId));
      this.directReads.set(node.spaceId, pending);
    }
    return pending;
  }

  private toSet(nodeId: string, snap: VmidSnapshot, fromCache: boolean): VmidSet {
    this.lastVersions.set(nodeId, snap.version);
    const cache = snap.cache!;
    return {
      nodeId,
      taken: cache.taken,
      reserved: snap.reserved.map((r) => r.vmid),
      fromCache,
      refreshedAt: cache.refreshedAt,
      expiresAt: cache.expiresAt,
      version: snap.version,
    };
  }
}


interface Fill {
  /** Always carries a set; `written` false when it could not be cached (invalidated meanwhile). */
  snapshot: VmidSnapshot;
  written: boolean;
  /**
   * The guest listing that goes with the set: what Proxmox listed when this fill asked it,
   * the cached one when it was asked for (withGuests) and found; null when the fetch listed
   * none; absent otherwise.
   */
  guests?: Guest[] | null;
}

/**
 * An event read from the node's state rather than published: SYNC (its current version), or
 * DELETED from its tombstone (the published one was missed, or came before subscribing).
 */
function stateEvent(nodeId: string, kind: 'SYNC' | 'DELETED', version: number): VmidEvent {
  return { nodeId, kind, version, at: new Date(), vmids: null, added: [], removed: [] };
}

/**
 * The store keeps one VMID space per cluster: what it calls a node is the space (its events
 * go to the space's channel, named by `userId`), shared by every registration of the cluster.
 */
function spaceOf(node: NodeRef): NodeRef {
  return spaceRef(node.spaceId);
}

function spaceRef(spaceId: string): NodeRef {
  return { id: spaceId, userId: spaceId, spaceId };
}

/**
 * The space's event under a registration's id: one object per event and registration, shared
 * by every local subscription, so GraphQL's shared execution serialises it once for all of
 * them (a copy per subscriber would be serialised once each).
 */
const relabelled = new WeakMap<VmidEvent, Map<string, VmidEvent>>();
function labelled(event: VmidEvent, nodeId: string): VmidEvent {
  if (event.nodeId === nodeId) return event;
  let copies = relabelled.get(event);
  if (!copies) relabelled.set(event, (copies = new Map()));
  let copy = copies.get(nodeId);
  if (!copy) copies.set(nodeId, (copy = { ...event, nodeId }));
  return copy;
}

function takenError(vmid: number): ConflictError {
  return new ConflictError(`VMID ${vmid} is already taken by a guest of this node's cluster.`, { vmid });
}

function exhausted(bounds: { min: number; max: number }): ConflictError {
  return new ConflictError(`No VMID from ${bounds.min} to ${bounds.max} is free.`, { min: bounds.min, max: bounds.max });
}

function notFillable(node: NodeRef): CacheUnavailableError {
  return new CacheUnavailableError(
    `The VMID cache of node ${node.id} could not be filled (it was invalidated while being filled, repeatedly); try again.`,
  );
}
