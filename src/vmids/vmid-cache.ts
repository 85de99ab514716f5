import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { NotFoundError } from '../errors.js';
import { SingleFlight } from '../concurrency/single-flight.js';
import { CacheUnavailableError } from './errors.js';
import { bestEffort, spaceOf } from './spaces.js';
import type { CachedSet, FilledSnapshot, Guest, VmidSnapshot, VmidStore } from './store.js';
import type { NodeRef, VmidSet } from './types.js';
import { checkVmid } from './validation.js';

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
  guests: ReadonlyArray<{
    vmid: number;
    type: 'qemu' | 'lxc';
    name?: string | null | undefined;
    node?: string | null | undefined;
    status?: string | null | undefined;
  }>;
}

/** A fetch's answer as the service keeps it: `guests` null when the fetch listed none. */
interface Fetched {
  taken: number[];
  guests: Guest[] | null;
}

export interface VmidCacheOptions {
  store: VmidStore;
  fetchTakenVmids: FetchTakenVmids;
  /** VMID_CACHE_TTL_S */
  cacheTtlSeconds: number;
  log?: Logger | undefined;
  fillLockMs?: number | undefined;
  fillWaitMs?: number | undefined;
  fillPollMs?: number | undefined;
  onLookup?: ((hit: boolean) => void) | undefined;
}

/** How often a request that needs a filled cache retries after finding none. */
export const FILL_ATTEMPTS = 3;

/**
 * The cached taken set of each VMID space: read-through, with at most one Proxmox call at a
 * time per space (single-flight in this process, the store's fill lock across instances).
 * Store failures (Redis down) answer from Proxmox directly (fromCache false, reservations
 * unknown and reported as none).
 */
export class VmidCache {
  private readonly store: VmidStore;
  private readonly fetchTakenVmids: FetchTakenVmids;
  private readonly ttlS: number;
  private readonly log: Logger | undefined;
  private readonly fillLockMs: number;
  private readonly fillWaitMs: number;
  private readonly fillPollMs: number;
  private readonly onLookup: ((hit: boolean) => void) | undefined;
  /** In-process single-flight: concurrent misses of one node share one fill. */
  private readonly fills = new SingleFlight<string, Fill>();
  /** Same for fills nobody reads back (fillSet). */
  private readonly setFills = new SingleFlight<string, void>();
  /** Same for direct Proxmox reads while the store is down. */
  private readonly directReads = new Map<string, Promise<Fetched>>();
  /** The last version this process saw per node, for answers given while the store is down. */
  private readonly lastVersions = new Map<string, number>();

  constructor(opts: VmidCacheOptions) {
    this.store = opts.store;
    this.fetchTakenVmids = opts.fetchTakenVmids;
    this.ttlS = opts.cacheTtlSeconds;
    this.log = opts.log;
    this.fillLockMs = opts.fillLockMs ?? 15_000;
    this.fillWaitMs = opts.fillWaitMs ?? this.fillLockMs;
    this.fillPollMs = opts.fillPollMs ?? 25;
    this.onLookup = opts.onLookup;
  }

  /** A version this process was told of (a reservation's), for answers while the store is down. */
  sawVersion(nodeId: string, version: number): void {
    this.lastVersions.set(nodeId, version);
  }

  /** The node is gone: its last version is no longer worth keeping. */
  forget(nodeId: string): void {
    this.lastVersions.delete(nodeId);
  }

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
    return this.store.isCached(spaceOf(node));
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
      if (!guests) throw new Error('fetchTakenVmids answered VMIDs without a guest listing', { cause: err });
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
    return snap.cache.taken.includes(vmid) || snap.reserved.includes(vmid);
  }

  /**
   * Fills the node's cache from Proxmox with at most one Proxmox call at a time per node:
   * in this process through `fills`, across instances through the store's fill lock. A
   * request that finds the lock taken waits for the holder's result (polling the cache);
   * if the holder gives up without filling it tries to take over, and after fillWaitMs it
   * asks Proxmox itself rather than fail.
   */
  fill(node: NodeRef, withGuests = false): Promise<Fill> {
    return this.fills.run(node.spaceId, () => this.fillOnce(node, withGuests));
  }

  /**
   * `fill` for a caller that goes back to the store afterwards (a reservation or a search that
   * found no set cached): whether another instance filled it meanwhile is asked without the
   * snapshot, and the write answers without the reservations. A snapshot carries every live
   * reservation of the space (tens of thousands take Redis over a millisecond in one command),
   * and this caller would not look at it. Shares Proxmox calls with `fill` through the store's
   * lock, not in this process.
   */
  fillSet(node: NodeRef): Promise<void> {
    return this.setFills.run(node.spaceId, () =>
      this.underFillLock(
        node,
        async () => (await this.store.isCached(spaceOf(node))) || null,
        async (epoch) => {
          await this.fetchAndWriteSet(node, epoch);
          return true;
        },
      ).then(() => undefined),
    );
  }

  /**
   * refreshVmidCache for a caller that reads nothing back (the cluster watcher, when Proxmox's
   * tasks say the guests changed): the write answers without the reservations (see fillSet).
   * With the store down it fails before Proxmox is asked (nothing could be written or
   * announced): the watcher lists again on its next round.
   */
  async refreshSet(node: NodeRef): Promise<void> {
    // Read before Proxmox is asked, as refreshVmidCache does.
    await this.fetchAndWriteSet(node, await this.epochOf(node));
  }

  private async fetchAndWriteSet(node: NodeRef, epoch: number): Promise<void> {
    const fetched = await this.fetch(node);
    const outcome = await this.store.refreshSet(spaceOf(node), fetched.taken, this.ttlS, epoch);
    // As a set answered would (toSet): answers given while the store is down go on from it.
    this.lastVersions.set(node.id, outcome.version);
    if (outcome.written) await this.keepGuests(node, fetched.guests, outcome.cache);
  }

  /**
   * `withGuests`: a cached set is not enough, its guest listing must be there too (a set
   * written by an earlier version keeps none); without it Proxmox is asked (the set is
   * written again with the listing).
   */
  private fillOnce(node: NodeRef, withGuests: boolean): Promise<Fill> {
    return this.underFillLock(
      node,
      async () => this.filled(node, await this.store.read(spaceOf(node)), withGuests),
      (epoch) => this.fetchAndWrite(node, epoch),
    );
  }

  /**
   * Fills under the store's lock: `done` answers what a fill would once the set is there
   * (null: not yet), `fetchAndWrite` asks Proxmox and writes (given the epoch read first).
   */
  private async underFillLock<T>(
    node: NodeRef,
    done: () => Promise<T | null>,
    fetchAndWrite: (epoch: number) => Promise<T>,
  ): Promise<T> {
    const deadline = Date.now() + this.fillWaitMs;
    for (;;) {
      const token = await this.store.tryLock(node.spaceId, this.fillLockMs);
      if (token) {
        try {
          const epoch = await this.epochOf(node);
          // Someone may have filled between our miss and our lock.
          const already = await done();
          if (already) return already;
          return await fetchAndWrite(epoch);
        } finally {
          await this.store.unlock(node.spaceId, token).catch(() => undefined);
        }
      }
      while (Date.now() < deadline) {
        await sleep(this.fillPollMs);
        const already = await done();
        if (already) return already;
        if (!(await this.store.isLocked(node.spaceId))) break;
      }
      if (Date.now() >= deadline) {
        this.log?.warn({ nodeId: node.id }, 'vmid cache: gave up waiting for another instance to fill; asking Proxmox');
        return fetchAndWrite(await this.epochOf(node));
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
    const guests = answer.guests.map((g): Guest => ({
      vmid: g.vmid,
      type: g.type,
      name: g.name ?? null,
      node: g.node || null,
      status: g.status || null,
    }));
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
      await this.keepGuests(node, fetched.guests, outcome.snapshot.cache);
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

  /** Keeps the listing a fill fetched with the set it wrote, as long as that set is cached. */
  private async keepGuests(node: NodeRef, guests: Guest[] | null, cache: CachedSet): Promise<void> {
    if (!guests) return;
    const { refreshedAt, expiresAt } = cache;
    // Without it the next guests read asks Proxmox again: not worth failing the fill for.
    await bestEffort(this.log, 'keep the guest listing', () =>
      this.store.putGuests(spaceOf(node), { guests, refreshedAt, expiresAt }),
    );
  }

  /** A snapshot with a filled cache, filling it first if needed. */
  async filledSnapshot(node: NodeRef): Promise<FilledSnapshot> {
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
    this.log?.warn(
      { nodeId: node.id, err: { message: cause.message } },
      'vmid cache unavailable: answering from Proxmox directly',
    );
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
      reserved: snap.reserved,
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

export function notFillable(node: NodeRef): CacheUnavailableError {
  return new CacheUnavailableError(
    `The VMID cache of node ${node.id} could not be filled (it was invalidated while being filled, repeatedly); try again.`,
  );
}
