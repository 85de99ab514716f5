import type { Logger } from 'pino';
import { lruCache } from '../cache/lru.js';
import { KeyedBatcher } from '../concurrency/batcher.js';
import { ConflictError, FailedPreconditionError } from '../errors.js';
import { checkReservationKey, type KeyEntry, type ReservationKeys } from './reservation-keys.js';
import { bestEffort, spaceOf } from './spaces.js';
import type { ReserveOutcome, ReserveRequest, VmidStore } from './store.js';
import { type NodeRef, VMID_MAX, VMID_MIN, type VmidReservation } from './types.js';
import { checkMin, checkTtlSeconds, checkVmid, DEFAULT_RESERVATION_TTL_S } from './validation.js';
import { FILL_ATTEMPTS, notFillable, type VmidCache } from './vmid-cache.js';

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

export interface VmidReservationsOptions {
  store: VmidStore;
  cache: VmidCache;
  authority: VmidAuthority;
  keys?: ReservationKeys | undefined;
  log?: Logger | undefined;
}

/**
 * How many candidates in a row a reservation without a vmid tries when Proxmox reports each
 * one in use (guests the cached listing does not know yet, e.g. created by Terraform a moment ago).
 */
const CONFIRM_ATTEMPTS = 5;

/**
 * The most reservations of one cluster a batch decides (see decide): one database statement
 * records them, and Proxmox is asked about each at once (the Proxmox client keeps 16 sockets
 * per endpoint). The Redis store decides them in scripts of at most 8 (RESERVE_SCRIPT_MAX).
 */
const MAX_BATCH = 16;

/**
 * How long a cluster's next batch may wait for the callers of the batch that just ended
 * (KeyedBatcher's gatherMs). Clients that reserve in a loop come back within about a
 * millisecond; without the wait their calls split into two half-size batches that alternate
 * (measured with `npm run bench -- 5`: batches of 8 on average instead of 12 to 15, and
 * about a fifth more CPU per reservation in the servers, Redis and PostgreSQL).
 */
const GATHER_MS = 2;

/** One reservation of a batch, as decided: the store's outcome and, for one made, Proxmox's word on it. */
interface Decided {
  outcome: ReserveOutcome;
  /** Made and confirmed free by Proxmox (false: Proxmox reports it in use; it is taken now). */
  free?: boolean;
  /** Made, but Proxmox could not be asked: it ended, and this is the answer. */
  error?: Error;
}

/** How often a keyed reservation retries when concurrent calls with its key overtake it. */
const KEY_ROUNDS = 3;

/** How long a cluster's `next-id` range is trusted (datacenter options rarely change). */
const RANGE_TTL_MS = 60_000;

/**
 * Reservations of VMIDs, atomic across instances (the store), checked against a filled cache
 * and confirmed by Proxmox; idempotent retries by key.
 */
export class VmidReservations {
  private readonly store: VmidStore;
  private readonly cache: VmidCache;
  private readonly authority: VmidAuthority;
  private readonly keys: ReservationKeys | undefined;
  private readonly log: Logger | undefined;
  /** Each space's `next-id` range as last read, with when it stops being trusted. */
  private readonly ranges = lruCache<string, { range: VmidRange | null }>({ max: 10_000, ttlMs: RANGE_TTL_MS });
  /** Reservations of one cluster on this instance, decided and confirmed in batches. */
  private readonly batches = new KeyedBatcher<string, { node: NodeRef; request: ReserveRequest }, Decided>(
    (_, items) => this.decide(items),
    MAX_BATCH,
    GATHER_MS,
  );

  constructor(opts: VmidReservationsOptions) {
    this.store = opts.store;
    this.cache = opts.cache;
    this.authority = opts.authority;
    this.keys = opts.keys;
    this.log = opts.log;
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
      await this.cache.fillSet(node);
    }
  }

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
    const request: ReserveRequest = { vmid: vmid ?? null, ...bounds, owner: node.userId, ttlSeconds };
    for (;;) {
      const decided = await this.batches.run(node.spaceId, { node, request });
      if (decided.error !== undefined) throw decided.error;
      const outcome = decided.outcome;
      switch (outcome.status) {
        case 'reserved':
          if (decided.free) {
            this.cache.sawVersion(node.id, outcome.version);
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
          await this.cache.fillSet(node);
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
  private async reserveKeyed(
    node: NodeRef,
    vmid: number | null | undefined,
    ttlSeconds: number,
    min: number,
    key: string,
  ): Promise<VmidReservation> {
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
      await bestEffort(this.log, 'release a reservation another call with its key overtook', () =>
        this.releaseVmid(node, fresh.vmid),
      );
      if (round >= KEY_ROUNDS)
        throw new ConflictError('Concurrent reservations with the same key kept overtaking each other: try again.', {
          key,
        });
    }
  }

  /** What a key's entry answers now: its live reservation, its VMID consumed, or nothing. */
  private async keyAnswer(node: NodeRef, keys: ReservationKeys, entry: KeyEntry): Promise<VmidReservation | null> {
    const held = await this.store.holder(spaceOf(node), entry.vmid);
    if (held) {
      // The caller's reservation: the one the entry recorded (its expiry to the millisecond).
      if (held.expiresAt.getTime() === entry.expiresAt.getTime()) {
        return { nodeId: node.id, vmid: entry.vmid, expiresAt: entry.expiresAt, consumed: false };
      }
      return null; // another reservation of the VMID now
    }
    const guest =
      (await keys.registered(node.spaceId, node.userId, entry.vmid)) ||
      !(await this.authority.isFree(node, entry.vmid));
    return guest ? { nodeId: node.id, vmid: entry.vmid, expiresAt: entry.expiresAt, consumed: true } : null;
  }

  /** A new reservation for a key: its former VMID again when that is free, else as asked. */
  private async reserveAgain(
    node: NodeRef,
    entry: KeyEntry | null,
    vmid: number | null | undefined,
    ttlSeconds: number,
    min: number,
  ): Promise<VmidReservation> {
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
   * Concurrent reservations of one cluster on this instance go together: a reservation that
   * finds its cluster quiet goes at once, the ones that arrive meanwhile go as the next batch
   * (after waiting briefly for the previous batch's callers: GATHER_MS). The store decides the
   * batch (reserveMany: scripts of up to 8, one statement records it all), then Proxmox
   * confirms each VMID made, all at once. A batch spans a whole reservation, confirmation
   * included, so under load it gathers what the instance has in flight for the cluster: the
   * scripts, the record and the events are shared by more.
   */
  private async decide(items: ReadonlyArray<{ node: NodeRef; request: ReserveRequest }>): Promise<Decided[]> {
    const outcomes = await this.store.reserveMany(
      spaceOf(items[0]!.node),
      items.map((i) => i.request),
    );
    return Promise.all(
      outcomes.map(async (outcome, i): Promise<Decided> => {
        if (outcome.status !== 'reserved') return { outcome };
        try {
          return { outcome, free: await this.confirmedFree(items[i]!.node, outcome.vmid) };
        } catch (error) {
          return { outcome, error: error instanceof Error ? error : new Error(String(error)) };
        }
      }),
    );
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
      await bestEffort(this.log, 'end an unconfirmed reservation', () =>
        this.store.release(spaceOf(node), vmid, node.userId),
      );
      throw err;
    }
    if (!free)
      await bestEffort(this.log, 'record a VMID Proxmox reports in use', () => this.store.consume(spaceOf(node), vmid));
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
}

function takenError(vmid: number): ConflictError {
  return new ConflictError(`VMID ${vmid} is already taken by a guest of this node's cluster.`, { vmid });
}

function exhausted(bounds: { min: number; max: number }): ConflictError {
  return new ConflictError(`No VMID from ${bounds.min} to ${bounds.max} is free.`, {
    min: bounds.min,
    max: bounds.max,
  });
}
