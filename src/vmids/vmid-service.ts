import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { ConflictError, NotFoundError } from '../errors.js';
import { CacheUnavailableError } from './errors.js';
import { EventStream } from './event-stream.js';
import { LapseSweeper } from './lapse-sweeper.js';
import { type FilledSnapshot, lowestFree, type VmidSnapshot, type VmidStore } from './store.js';
import { type NodeRef, VMID_MAX, VMID_MIN, type VmidEvent, type VmidReservation, type VmidSet } from './types.js';
import { checkMin, checkTtlSeconds, checkVmid, DEFAULT_RESERVATION_TTL_S } from './validation.js';
import { SingleFlight } from '../concurrency/single-flight.js';

/** Asks Proxmox which VMIDs exist on the node's cluster (errors: DomainErrors, PROXMOX_*). */
export type FetchTakenVmids = (node: NodeRef) => Promise<number[]>;

export interface VmidServiceOptions {
  store: VmidStore;
  fetchTakenVmids: FetchTakenVmids;
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
}

/** How often a subscription retries reading versions after a pub/sub reconnect. */
const RESYNC_RETRY_MS = 250;

/** How often a request that needs a filled cache retries after finding none. */
const FILL_ATTEMPTS = 3;

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
  private readonly ttlS: number;
  private readonly log: Logger | undefined;
  private readonly fillLockMs: number;
  private readonly fillWaitMs: number;
  private readonly fillPollMs: number;
  private readonly onLookup: ((hit: boolean) => void) | undefined;
  /** In-process single-flight: concurrent misses of one node share one fill. */
  private readonly fills = new SingleFlight<string, Fill>();
  /** Same for direct Proxmox reads while the store is down. */
  private readonly directReads = new Map<string, Promise<number[]>>();
  /** The last version this process saw per node, for answers given while the store is down. */
  private readonly lastVersions = new Map<string, number>();
  /** Announces lapsed reservations of the nodes this process has subscribers of. */
  private readonly lapses: LapseSweeper;

  constructor(opts: VmidServiceOptions) {
    this.store = opts.store;
    this.fetchTakenVmids = opts.fetchTakenVmids;
    this.ttlS = opts.cacheTtlSeconds;
    this.log = opts.log;
    this.fillLockMs = opts.fillLockMs ?? 15_000;
    this.fillWaitMs = opts.fillWaitMs ?? this.fillLockMs;
    this.fillPollMs = opts.fillPollMs ?? 25;
    this.onLookup = opts.onLookup;
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
      const snap = await this.store.read(node);
      this.onLookup?.(snap.cache !== null);
      if (snap.cache) return this.toSet(node.id, snap, true);
      const fill = await this.fill(node);
      return this.toSet(node.id, fill.snapshot, false);
    } catch (err) {
      if (!(err instanceof CacheUnavailableError)) throw err;
      return this.directSet(node, err);
    }
  }

  /** Always asks Proxmox, replaces the cached set (a REFRESHED event if it changed). */
  async refreshVmidCache(node: NodeRef): Promise<VmidSet> {
    let taken: number[] | undefined;
    try {
      // Read before Proxmox is asked (not alongside): an invalidation after this read must
      // make the write below stale, whatever Proxmox answers.
      const epoch = await this.epochOf(node);
      taken = await this.fetchTakenVmids(node);
      const snapshot = await this.write(node, taken, epoch);
      return this.toSet(node.id, snapshot, false);
    } catch (err) {
      if (!(err instanceof CacheUnavailableError)) throw err;
      return this.directSet(node, err, taken);
    }
  }

  /**
   * Drops the cached set, so the next read asks Proxmox. Always bumps the version and
   * publishes INVALIDATED (callers invalidate because something changed in Proxmox); answers
   * whether a cached set existed.
   */
  async invalidateVmidCache(node: NodeRef): Promise<boolean> {
    const { existed, version } = await this.store.invalidate(node);
    this.lastVersions.set(node.id, version);
    return existed;
  }

  /** Taken by a guest or reserved. Needs the store: reservations live there. */
  async isVmidTaken(node: NodeRef, vmid: number): Promise<boolean> {
    checkVmid(vmid);
    const snap = await this.filledSnapshot(node);
    return snap.cache.taken.includes(vmid) || snap.reserved.some((r) => r.vmid === vmid);
  }

  /** The lowest VMID ≥ min that is neither taken nor reserved (it reserves nothing). */
  async nextFreeVmid(node: NodeRef, min: number = VMID_MIN): Promise<number> {
    checkMin(min);
    const snap = await this.filledSnapshot(node);
    const vmid = lowestFree(
      min,
      snap.cache.taken,
      snap.reserved.map((r) => r.vmid),
    );
    if (vmid > VMID_MAX) throw new ConflictError(`No VMID from ${min} to ${VMID_MAX} is free.`, { min });
    return vmid;
  }

  // ------------------------------------------------------------------ reservations

  /**
   * Reserves `vmid`, or without one the lowest free VMID ≥ min, for ttlSeconds — atomically
   * across instances. CONFLICT when the VMID is taken or reserved. The check runs against a
   * filled cache (read-through first), so a reservation never ignores a guest Proxmox knows.
   */
  async reserveVmid(
    node: NodeRef,
    vmid: number | null | undefined,
    ttlSeconds: number = DEFAULT_RESERVATION_TTL_S,
    min: number = VMID_MIN,
  ): Promise<VmidReservation> {
    if (vmid != null) checkVmid(vmid);
    checkTtlSeconds(ttlSeconds);
    checkMin(min);
    for (let attempt = 1; ; attempt++) {
      const outcome = await this.store.reserve(node, { vmid: vmid ?? null, min, max: VMID_MAX, owner: node.userId, ttlSeconds });
      switch (outcome.status) {
        case 'reserved':
          this.lastVersions.set(node.id, outcome.version);
          return { nodeId: node.id, vmid: outcome.vmid, expiresAt: outcome.expiresAt };
        case 'taken':
          throw new ConflictError(`VMID ${outcome.vmid} is already taken by a guest of this node's cluster.`, { vmid: outcome.vmid });
        case 'already-reserved':
          throw new ConflictError(`VMID ${outcome.vmid} is already reserved.`, { vmid: outcome.vmid });
        case 'exhausted':
          throw new ConflictError(`No VMID from ${min} to ${VMID_MAX} is free.`, { min });
        case 'miss':
          if (attempt >= FILL_ATTEMPTS) throw notFillable(node);
          await this.fill(node);
      }
    }
  }

  /** Ends a reservation early; false when there was none (or it had expired). */
  async releaseVmid(node: NodeRef, vmid: number): Promise<boolean> {
    checkVmid(vmid);
    return this.store.release(node, vmid, node.userId);
  }

  /**
   * A guest/container was created for `vmid`: its reservation ends and, if the node's set is
   * cached, the VMID joins the taken set (REFRESHED), so it stays unavailable until the next
   * refresh sees the guest.
   */
  async consumeReservation(node: NodeRef, vmid: number): Promise<{ released: boolean; added: boolean }> {
    checkVmid(vmid);
    return this.store.consume(node, vmid);
  }

  // ------------------------------------------------------------------ hooks of node management

  /**
   * registerContainer: the reservation of `vmid` is used up, and the cached set is dropped
   * (the contract: registering invalidates), so the next read sees the guest as Proxmox does.
   * Best effort: the container is recorded already.
   */
  async containerRegistered(node: NodeRef, vmid: number): Promise<void> {
    await this.bestEffort('consume a reservation', () => this.consumeReservation(node, vmid));
    await this.bestEffort('invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /** unregisterContainer: the guest may be gone; the next read asks Proxmox. */
  async containerUnregistered(node: NodeRef, _vmid: number): Promise<void> {
    await this.bestEffort('invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /** Host, port or credentials changed: the cached set may be another cluster's. */
  async nodeConnectionChanged(node: NodeRef): Promise<void> {
    await this.bestEffort('invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /** The node is gone: drop its cache and reservations (its version stays as a tombstone: forget). */
  async nodeDeleted(node: NodeRef): Promise<void> {
    this.lastVersions.delete(node.id);
    await this.bestEffort('forget the node', () => this.store.forget(node));
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

  /** Events of one node; the first is SYNC with the node's current version. */
  subscribeNode(node: NodeRef): AsyncIterableIterator<VmidEvent> {
    return this.subscribe(node.userId, [node.id], node.id);
  }

  /**
   * Events of every node of a user; first one SYNC per node in `nodeIds` (nodes added later
   * show up with their first change).
   */
  subscribeUser(userId: string, nodeIds: readonly string[]): AsyncIterableIterator<VmidEvent> {
    return this.subscribe(userId, nodeIds, null);
  }

  private subscribe(userId: string, syncNodeIds: readonly string[], onlyNode: string | null): AsyncIterableIterator<VmidEvent> {
    const store = this.store;
    const lapses = this.lapses;
    return new EventStream<VmidEvent>(async (push, stop) => {
      // Until the SYNCs are out, live events wait here; afterwards an event passes only if it
      // is newer than what this subscriber has been told (so nothing is lost or repeated
      // between "listening" and "read the version").
      let floors: Map<string, number> | null = null;
      const early: VmidEvent[] = [];
      // The nodes this subscription covers, watched for lapsing reservations: the SYNC'd ones,
      // and (every node of a user) any other that shows up with a reservation.
      const watched = new Map<string, () => void>();
      // Nodes whose DELETED was delivered: nothing more comes of them.
      const deleted = new Set<string>();
      const watch = (nodeId: string) => {
        if (!watched.has(nodeId) && !deleted.has(nodeId)) watched.set(nodeId, lapses.watch({ id: nodeId, userId }));
      };
      const deliver = (event: VmidEvent) => {
        if (onlyNode !== null && event.nodeId !== onlyNode) return;
        // Nothing follows a node's DELETED (an instance of an earlier version, during a rolling
        // upgrade, may still write a deleted node's keys: its events are not passed on).
        if (deleted.has(event.nodeId)) return;
        if (event.kind === 'RESERVED') {
          watch(event.nodeId);
          lapses.observe(event);
        }
        if (!floors) {
          early.push(event);
          return;
        }
        if (event.version <= (floors.get(event.nodeId) ?? 0)) return;
        floors.set(event.nodeId, event.version);
        send(event);
        if (event.kind === 'DELETED') ended(event.nodeId);
      };
      /** The node's DELETED went out: nothing more comes of it. */
      const ended = (nodeId: string) => {
        deleted.add(nodeId);
        watched.get(nodeId)?.();
        watched.delete(nodeId);
        // The node's own subscription has nothing left to follow: it completes.
        if (onlyNode !== null) stop();
      };
      /** The node's first event, or the one after an outage: SYNC, or DELETED if it is gone. */
      const announce = (known: Map<string, number>, nodeId: string, state: { version: number; deleted: boolean }) => {
        known.set(nodeId, state.version);
        send(stateEvent(nodeId, state.deleted ? 'DELETED' : 'SYNC', state.version));
        if (state.deleted) ended(nodeId);
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
              // Every node this subscriber has been told of: the SYNC'd ones, and (every node of a
              // user) those whose events arrived since.
              for (const nodeId of [...floors.keys()]) {
                if (deleted.has(nodeId)) continue;
                const state = await store.state(nodeId);
                // Its DELETED may have arrived while the state was read.
                if (!active || deleted.has(nodeId)) continue;
                // Not only "newer": a Redis that lost its data (restart without persistence,
                // failover) starts versions again; the lower floor lets new events through.
                // A node deleted during the outage: its DELETED was missed, its tombstone says so.
                if (state.deleted || state.version !== (floors.get(nodeId) ?? 0)) announce(floors, nodeId, state);
              }
              // A RESERVED missed meanwhile did not move its node's lapse timer.
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

      let unlisten: (() => void) | undefined;
      try {
        unlisten = await store.listen(userId, deliver, () => void resync());
        const states = await Promise.all(syncNodeIds.map(async (id) => [id, await store.state(id)] as const));
        floors = new Map();
        for (const [nodeId, state] of states) announce(floors, nodeId, state);
        for (const event of early.splice(0)) deliver(event);
        for (const nodeId of syncNodeIds) watch(nodeId);
      } catch (err) {
        unlisten?.();
        for (const unwatch of watched.values()) unwatch();
        stop(err);
        return;
      }
      await stop;
      active = false;
      unlisten();
      for (const unwatch of watched.values()) unwatch();
    });
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
  private fill(node: NodeRef): Promise<Fill> {
    return this.fills.run(node.id, () => this.fillOnce(node));
  }

  private async fillOnce(node: NodeRef): Promise<Fill> {
    const deadline = Date.now() + this.fillWaitMs;
    for (;;) {
      const token = await this.store.tryLock(node.id, this.fillLockMs);
      if (token) {
        try {
          const epoch = await this.epochOf(node);
          // Someone may have filled between our miss and our lock.
          const current = await this.store.read(node);
          if (current.cache) return { snapshot: current, written: true };
          return await this.fetchAndWrite(node, epoch);
        } finally {
          await this.store.unlock(node.id, token).catch(() => undefined);
        }
      }
      while (Date.now() < deadline) {
        await sleep(this.fillPollMs);
        const snap = await this.store.read(node);
        if (snap.cache) return { snapshot: snap, written: true };
        if (!(await this.store.isLocked(node.id))) break;
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
    const { epoch, deleted } = await this.store.state(node.id);
    if (deleted) throw new NotFoundError('Node', node.id);
    return epoch;
  }

  private async fetchAndWrite(node: NodeRef, epoch: number): Promise<Fill> {
    const taken = await this.fetchTakenVmids(node);
    const snapshot = await this.write(node, taken, epoch);
    return { snapshot, written: snapshot.cache !== null };
  }

  /**
   * Writes a fetched set unless the cache was invalidated meanwhile; then the answer is the
   * fetched set itself (true when Proxmox was asked) and the cache stays empty.
   */
  private async write(node: NodeRef, taken: number[], epoch: number): Promise<FilledSnapshot | VmidSnapshot> {
    const outcome = await this.store.refresh(node, taken, this.ttlS, epoch);
    if (outcome.written) return outcome.snapshot;
    const snap = await this.store.read(node);
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
      const snap = await this.store.read(node);
      if (snap.cache) return snap as FilledSnapshot;
      const fill = await this.fill(node);
      if (fill.snapshot.cache) return fill.snapshot as FilledSnapshot;
      if (attempt >= FILL_ATTEMPTS) throw notFillable(node);
    }
  }

  // ------------------------------------------------------------------ store down

  /** Straight from Proxmox: nothing cached, reservations unknown (reported as none). */
  private async directSet(node: NodeRef, cause: CacheUnavailableError, fetched?: number[]): Promise<VmidSet> {
    this.log?.warn({ nodeId: node.id, err: { message: cause.message } }, 'vmid cache unavailable: answering from Proxmox directly');
    let pending = fetched ? Promise.resolve(fetched) : this.directReads.get(node.id);
    if (!pending) {
      pending = this.fetchTakenVmids(node).finally(() => this.directReads.delete(node.id));
      this.directReads.set(node.id, pending);
    }
    const taken = [...new Set(await pending)].sort((a, b) => a - b);
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
}

/**
 * An event read from the node's state rather than published: SYNC (its current version), or
 * DELETED from its tombstone (the published one was missed, or came before subscribing).
 */
function stateEvent(nodeId: string, kind: 'SYNC' | 'DELETED', version: number): VmidEvent {
  return { nodeId, kind, version, at: new Date(), vmids: null };
}

function notFillable(node: NodeRef): CacheUnavailableError {
  return new CacheUnavailableError(
    `The VMID cache of node ${node.id} could not be filled (it was invalidated while being filled, repeatedly); try again.`,
  );
}
