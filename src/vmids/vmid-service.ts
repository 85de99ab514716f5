import type { Logger } from 'pino';
import { ConflictError } from '../errors.js';
import { CacheUnavailableError } from './errors.js';
import type { ReservationKeys } from './reservation-keys.js';
import { bestEffort, spaceOf } from './spaces.js';
import type { Guest, VmidStore } from './store.js';
import { type NodeRef, VMID_MIN, type VmidEvent, type VmidReservation, type VmidSet } from './types.js';
import { checkVmid } from './validation.js';
import { type FetchTakenVmids, VmidCache } from './vmid-cache.js';
import { type VmidAuthority, VmidReservations } from './vmid-reservations.js';
import { VmidSubscriptions } from './vmid-subscriptions.js';

export type { FetchTakenVmids, VmidListing } from './vmid-cache.js';
export type { VmidAuthority, VmidRange } from './vmid-reservations.js';

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

/**
 * The VMIDs of a node's cluster: the cached taken set (vmid-cache.ts), atomic reservations
 * (vmid-reservations.ts) and live events (vmid-subscriptions.ts), and what node management
 * tells them. Callers pass a NodeRef whose ownership they checked.
 *
 * Store failures (Redis down) answer CacheUnavailableError (SERVICE_UNAVAILABLE), except
 * that getCachedVmids/refreshVmidCache fall back to asking Proxmox directly (fromCache
 * false, reservations unknown and reported as none).
 */
export class VmidService {
  private readonly store: VmidStore;
  private readonly log: Logger | undefined;
  private readonly cache: VmidCache;
  private readonly reservations: VmidReservations;
  private readonly subscriptions: VmidSubscriptions;

  constructor(opts: VmidServiceOptions) {
    this.store = opts.store;
    this.log = opts.log;
    this.cache = new VmidCache(opts);
    this.reservations = new VmidReservations({
      store: opts.store,
      cache: this.cache,
      authority: opts.authority,
      keys: opts.keys,
      log: opts.log,
    });
    this.subscriptions = new VmidSubscriptions(opts);
  }

  /** Ends subscriptions' pub/sub connection and timers of the store, and the lapse timers. */
  close(): Promise<void> {
    this.subscriptions.close();
    return this.store.close();
  }

  // ------------------------------------------------------------------ reads (vmid-cache.ts)

  getCachedVmids(node: NodeRef): Promise<VmidSet> {
    return this.cache.getCachedVmids(node);
  }

  hasCachedSet(node: NodeRef): Promise<boolean> {
    return this.cache.hasCachedSet(node);
  }

  guests(node: NodeRef): Promise<Guest[]> {
    return this.cache.guests(node);
  }

  refreshVmidCache(node: NodeRef): Promise<VmidSet> {
    return this.cache.refreshVmidCache(node);
  }

  /** refreshVmidCache without the answer (the cluster watcher): no snapshot is read for it. */
  refreshSet(node: NodeRef): Promise<void> {
    return this.cache.refreshSet(node);
  }

  invalidateVmidCache(node: NodeRef): Promise<boolean> {
    return this.cache.invalidateVmidCache(node);
  }

  isVmidTaken(node: NodeRef, vmid: number): Promise<boolean> {
    return this.cache.isVmidTaken(node, vmid);
  }

  // ------------------------------------------------------------------ reservations (vmid-reservations.ts)

  nextFreeVmid(node: NodeRef, min: number = VMID_MIN): Promise<number> {
    return this.reservations.nextFreeVmid(node, min);
  }

  reserveVmid(
    node: NodeRef,
    vmid: number | null | undefined,
    ttlSeconds?: number,
    min?: number,
    key?: string | null,
  ): Promise<VmidReservation> {
    return this.reservations.reserveVmid(node, vmid, ttlSeconds, min, key);
  }

  releaseVmid(node: NodeRef, vmid: number): Promise<boolean> {
    return this.reservations.releaseVmid(node, vmid);
  }

  consumeReservation(node: NodeRef, vmid: number): Promise<{ released: boolean; added: boolean }> {
    return this.reservations.consumeReservation(node, vmid);
  }

  // ------------------------------------------------------------------ events (vmid-subscriptions.ts)

  subscribeNode(node: NodeRef, afterVersion?: number): AsyncIterableIterator<VmidEvent> {
    return this.subscriptions.subscribeNode(node, afterVersion);
  }

  subscribeUser(userId: string, nodes: readonly NodeRef[]): AsyncIterableIterator<VmidEvent> {
    return this.subscriptions.subscribeUser(userId, nodes);
  }

  /** Nodes with a lapse timer (tests: none is left once their subscriptions end). */
  nodesWatchedForLapses(): number {
    return this.subscriptions.nodesWatchedForLapses();
  }

  // ------------------------------------------------------------------ hooks of node management

  /**
   * registerContainer may record `vmid` for the caller: CONFLICT while another user holds a
   * reservation of it on the cluster (registering would end their reservation).
   */
  async assertRegistrable(node: NodeRef, vmid: number): Promise<void> {
    checkVmid(vmid);
    let owner: string | undefined;
    try {
      owner = (await this.store.holder(spaceOf(node), vmid))?.owner;
    } catch (err) {
      // Redis down: registrations still succeed (the README's promise); nothing can be checked.
      if (err instanceof CacheUnavailableError) return;
      throw err;
    }
    if (owner !== undefined && owner !== node.userId) {
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
    await bestEffort(this.log, 'consume a reservation', async () => {
      added = (await this.consumeReservation(node, vmid)).added;
    });
    if (!added) await bestEffort(this.log, 'invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /** unregisterContainer: the guest may be gone or still there; the next read asks Proxmox. */
  async containerUnregistered(node: NodeRef, _vmid: number): Promise<void> {
    await bestEffort(this.log, 'invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /** Host, port or credentials changed: the cached set may be another cluster's. */
  async nodeConnectionChanged(node: NodeRef): Promise<void> {
    await bestEffort(this.log, 'invalidate the VMID cache', () => this.invalidateVmidCache(node));
  }

  /**
   * A registration was created. Its VMID space may be a tombstone (the cluster's last
   * registration was deleted within the day, forget): it is revived, so its VMIDs work again;
   * its version goes on from the DELETED event's. Best effort: the registration is recorded
   * already (should this fail, the space answers NOT_FOUND until its tombstone ends).
   */
  async nodeCreated(node: NodeRef): Promise<void> {
    await bestEffort(this.log, 'revive the VMID space', () => this.store.revive(spaceOf(node)));
    await bestEffort(this.log, 'announce the registration', () => this.store.announceRegistration(node));
  }

  /**
   * The registration is gone. With the last registration of its VMID space the space goes
   * too: cache and reservations dropped, DELETED announced, its version kept as a tombstone
   * (forget). While other registrations of the cluster (of any user) remain, the space stays
   * as it is: they go on using it, and only the deleted registration's subscribers are told
   * DELETED (announceGone).
   */
  async nodeDeleted(node: NodeRef, lastOfSpace = true): Promise<void> {
    this.cache.forget(node.id);
    if (!lastOfSpace) {
      await bestEffort(this.log, 'announce the deleted registration', () =>
        this.store.announceGone(spaceOf(node), node.id),
      );
      return;
    }
    await bestEffort(this.log, 'forget the node', () => this.store.forget(spaceOf(node)));
  }
}
