import type { NodeRef, VmidEvent } from './types.js';

/**
 * Where a node's VMID state lives: the cached taken set (with a TTL), reservations, the
 * version counter and the fill lock, plus the pub/sub that carries VmidEvents. Two
 * implementations share this contract and one test suite: RedisVmidStore (shared by every
 * instance of a deployment) and MemoryVmidStore (embedded mode, one process).
 *
 * Every mutation that changes a node's set bumps its version and publishes the event in the
 * same atomic step, so events reach subscribers in version order.
 *
 * The reuse hold (a store option, VMID_REUSE_HOLD_S): a VMID that leaves the used set — a
 * guest a fill no longer lists, a reservation released, lapsed, or consumed and then no longer
 * listed — is skipped by a search without a vmid (`reserveMany` with `vmid: null`, `nextFree`) for
 * that long, in the same atomic step as what freed it: Proxmox may still be deleting the guest.
 * An explicit vmid is not refused for it, and `read` shows it free. A fill finds the guests
 * that went by comparing with the set as last written, also when the cache had expired or was
 * invalidated meanwhile (see RedisVmidStore's REFRESH for how long that is kept).
 */
export interface VmidStore {
  /**
   * A consistent snapshot; `cache` is null when the set is not cached (missing or expired).
   * Reservations whose time is up are ended first, with their event (see expireDue).
   */
  read(node: NodeRef): Promise<VmidSnapshot>;
  /**
   * The node's version and invalidation epoch (both survive the cache's expiry). `deleted`:
   * the node was deleted (forget); `version` is then its DELETED event's.
   */
  state(nodeId: string): Promise<{ version: number; epoch: number; deleted: boolean }>;
  /**
   * Replaces the cached set with `taken` (kept ascending, once each) and sets its TTL.
   * `expectedEpoch` (read before asking Proxmox) makes the write conditional: if the cache was
   * invalidated meanwhile, the fetched set may predate the change, so nothing is written and
   * `written` is false. A write answers the snapshot it made (no second read of 10,000 VMIDs).
   */
  refresh(
    node: NodeRef,
    taken: readonly number[],
    ttlSeconds: number,
    expectedEpoch: number | null,
  ): Promise<RefreshOutcome>;
  /**
   * `refresh` for a caller that reads nothing back (a fill a reservation or a search waits
   * for): the same write, answered without the live reservations, which `refresh` reads with
   * its snapshot (a space's tens of thousands take Redis over a millisecond in one command).
   */
  refreshSet(
    node: NodeRef,
    taken: readonly number[],
    ttlSeconds: number,
    expectedEpoch: number | null,
  ): Promise<SetRefreshOutcome>;
  /** Whether the set is cached: `read`'s `cache !== null`, without reading the snapshot. */
  isCached(node: NodeRef): Promise<boolean>;
  /** Drops the cached set; always bumps the version (INVALIDATED). NOT_FOUND for a deleted node. */
  invalidate(node: NodeRef): Promise<{ existed: boolean; version: number }>;
  /**
   * Holds VMIDs for their owners, one per request, as one atomic step decided in order (each
   * request sees those before it): one answer per request. Without a vmid a request gets the
   * lowest free VMID in [min, max] that is not held (reuse hold), found in O(log n) steps of
   * the taken set's, the reservations' and the holds' sizes (never by walking them). The
   * reservations made are announced with one RESERVED event per expiry (their VMIDs
   * ascending): a batch with one TTL is one event. When the set is not cached, every answer is
   * `miss`.
   */
  reserveMany(node: NodeRef, requests: readonly ReserveRequest[]): Promise<ReserveOutcome[]>;
  /**
   * The lowest VMID in [min, max] that is neither taken nor reserved nor held, reserving
   * nothing (and changing nothing but the lapses it announces first). As cheap as a reservation's search.
   */
  nextFree(node: NodeRef, min: number, max: number): Promise<NextFreeOutcome>;
  /**
   * Ends `owner`'s reservation of `vmid`. false when there is none, and equally when another
   * user holds it: a caller learns nothing of other users' reservations this way (they show
   * in `read` like any other).
   */
  release(node: NodeRef, vmid: number, owner: string): Promise<boolean>;
  /**
   * A guest was created for `vmid`: drop its reservation, whoever holds it (the guest exists
   * now either way), and add it to a cached set.
   */
  consume(node: NodeRef, vmid: number): Promise<{ released: boolean; added: boolean }>;
  /**
   * Ends the node's reservations whose time is up: removed, the version bumped once and one
   * RELEASED event with them all (ascending). Every method that looks at reservations does
   * this first; this one exists so a lapse is announced when nobody calls them (LapseSweeper).
   * `nextInMs`: how long until the next reservation is due, null when none is left.
   */
  expireDue(node: NodeRef): Promise<{ nextInMs: number | null }>;
  /**
   * Deletes everything kept for a node (the node itself was deleted), and announces it: one
   * DELETED event, the node's last, numbered after its last change. What is left is a
   * tombstone: `state` reports the node deleted, `refresh` and `invalidate` answer NOT_FOUND
   * (a fill or change that was on its way re-creates nothing and announces nothing).
   */
  forget(node: NodeRef): Promise<void>;
  /**
   * One registration of the space was deleted while others go on using it: tells that
   * registration's subscribers (a DELETED event naming it in `registration`, at the space's
   * current version, which does not change), on every instance. Nothing else happens.
   */
  announceGone(node: NodeRef, registrationId: string): Promise<void>;
  /** The live reservation of `vmid` in the space: who holds it (a user id) and until when, or null. */
  holder(node: NodeRef, vmid: number): Promise<{ owner: string; expiresAt: Date } | null>;
  /**
   * The space was registered again (a cluster whose last registration was deleted): if it is
   * a tombstone (forget), it stops being one. Its version stays and goes on growing from there
   * (versions never go backwards: a subscriber of the new registration starts with SYNC at it);
   * a fill that read the epoch before the deletion writes nothing. Not a tombstone: nothing.
   */
  revive(node: NodeRef): Promise<void>;

  /**
   * Puts back reservations the store lost although its space is seeded (a failover to a
   * replica that had not got them): live ones not held already; nothing is announced.
   */
  restore(node: NodeRef, held: readonly HeldReservation[]): Promise<void>;

  /**
   * Reservations the durable record refused (it holds live ones of their VMIDs, which the store
   * lost) must not stand: in one atomic step, each is replaced by the record's reservation of
   * its VMID (`row`, when live: nothing is announced, the VMID stays reserved), or ends as a
   * release does (held, RELEASED) when the record has none. A VMID that no longer holds exactly
   * the refused reservation (same owner and expiry) keeps what it holds; the record's goes in
   * only where there is none. A deleted space is left alone.
   */
  settleRefused(node: NodeRef, refused: readonly RefusedReservation[]): Promise<void>;

  /**
   * Keeps the guest listing a fill got from Proxmox along with the set it wrote (`refreshedAt`
   * and `expiresAt` are that write's): it lives as long as that set. Written after the set
   * (not in the same atomic step), so a reader compares `refreshedAt` with the cached set's.
   */
  putGuests(node: NodeRef, listing: GuestListing): Promise<void>;
  /**
   * The listing last kept, null when there is none (never put, expired, or dropped with the
   * set). It may belong to another write than the cached set: see `refreshedAt`.
   */
  guests(node: NodeRef): Promise<GuestListing | null>;

  /**
   * The space's current version and the events it keeps with a greater version, ascending,
   * as published: the last EVENT_LOG_KEEP of them (a resuming subscriber replays them).
   */
  eventsAfter(node: NodeRef, version: number): Promise<{ version: number; events: VmidEvent[] }>;

  /** The fill lock: one filler per node across every instance sharing the store. */
  tryLock(nodeId: string, ttlMs: number): Promise<string | null>;
  unlock(nodeId: string, token: string): Promise<void>;
  isLocked(nodeId: string): Promise<boolean>;

  /**
   * Receives every event of one VMID space (the channel named by the space: the `id` of the
   * NodeRef its changes are made with, see VmidService; on a Redis Cluster the channel is in
   * the space's hash slot, so a script publishes its event where it writes). Resolves once events are being received, so a caller can read the version
   * afterwards without missing anything. `onResync` is called after a lost pub/sub
   * connection is back (events may have been missed meanwhile).
   */
  listen(userId: string, onEvent: (event: VmidEvent) => void, onResync?: () => void): Promise<() => void>;
  /**
   * A user registered a node (on any instance): their subscriptions to every node of theirs
   * start following it. Best effort (a notice missed in an outage: subscribe again).
   */
  announceRegistration(node: NodeRef): Promise<void>;
  /** Receives the user's registration notices (announceRegistration); resolves once receiving. */
  listenRegistrations(userId: string, onNode: (node: NodeRef) => void): Promise<() => void>;
  close(): Promise<void>;
}

/** How many of a space's latest events are kept for subscribers that resume (afterVersion). */
export const EVENT_LOG_KEEP = 1000;

/** A reservation as the durable record keeps it. */
export interface HeldReservation {
  vmid: number;
  /** The user holding it. */
  owner: string;
  expiresAt: Date;
}

/** A reservation the store made and the record refused, and the record's live one of its VMID. */
export interface RefusedReservation {
  refused: HeldReservation;
  row: HeldReservation | null;
}

/**
 * Where a store gets a space's reservations back from when it may have lost them: the
 * durable record (PostgreSQL or PGlite). A store checks, before every decision about a space,
 * that the space is marked seeded; a space that is not (first use, Redis restarted without
 * persistence or flushed, a failover to a replica that had not got the mark, an instance
 * restart for the in-process store) gets its live reservations from here first, then the mark.
 */
export type ReservationSeeder = (spaceId: string) => Promise<SeedState>;

/** What a space gets back after a loss. */
export interface SeedState {
  /** Its live reservations. */
  held: HeldReservation[];
  /**
   * The highest version it is known to have reached: its version goes on from at least here,
   * so it never goes backwards (subscribers compare versions).
   */
  version: number;
}

/** A guest (QEMU or LXC) as the cluster's listing reports it. */
export interface Guest {
  vmid: number;
  type: 'qemu' | 'lxc';
  name: string | null;
  /** The member it is on. */
  node: string | null;
  /** e.g. running, stopped; `unknown` for a guest of an offline member. */
  status: string | null;
}

/** The guests of one fill, ascending by vmid, and the write of the set it came with. */
export interface GuestListing {
  guests: Guest[];
  refreshedAt: Date;
  expiresAt: Date;
}

export interface CachedSet {
  taken: number[];
  refreshedAt: Date;
  expiresAt: Date;
}

export interface VmidSnapshot {
  version: number;
  cache: CachedSet | null;
  /**
   * The VMIDs of the live reservations, ascending. Their expiries are not read with them (a
   * space's ten thousand, with expiries, cost Redis milliseconds per read): holder() tells one.
   */
  reserved: number[];
  /** When the first of them lapses (null: none). */
  firstExpiry: Date | null;
}

/** A snapshot whose set is cached. */
export type FilledSnapshot = VmidSnapshot & { cache: CachedSet };

export type RefreshOutcome =
  /** `snapshot`: the set just written, the live reservations and the version after the write. */
  { written: true; changed: boolean; snapshot: FilledSnapshot } | { written: false; version: number };

export type SetRefreshOutcome =
  { written: true; changed: boolean; version: number; cache: CachedSet } | { written: false; version: number };

/** A refresh's outcome as refreshSet answers it: the set and the version, no reservations. */
export function setOutcome(outcome: RefreshOutcome): SetRefreshOutcome {
  if (!outcome.written) return outcome;
  const { version, cache } = outcome.snapshot;
  return { written: true, changed: outcome.changed, version, cache };
}

export interface ReserveRequest {
  /** null: the lowest VMID in [min, max] that is neither taken nor reserved nor held (reuse hold). */
  vmid: number | null;
  min: number;
  /**
   * Inclusive upper bound of the search without a vmid (the datacenter's `next-id` range, or
   * VMID_MAX). An explicit vmid may lie above it: Proxmox's range is not a hard limit.
   */
  max: number;
  /** The user the reservation is held for: only they can release it. */
  owner: string;
  ttlSeconds: number;
}

export type ReserveOutcome =
  | { status: 'reserved'; vmid: number; expiresAt: Date; version: number }
  /** The node's set is not cached: fill it first, then try again. */
  | { status: 'miss' }
  | { status: 'taken'; vmid: number }
  | { status: 'already-reserved'; vmid: number }
  /** No VMID in [min, max] is free (only without a vmid). */
  | { status: 'exhausted' };

export type NextFreeOutcome =
  | { status: 'free'; vmid: number }
  /** The node's set is not cached: fill it first, then try again. */
  | { status: 'miss' }
  | { status: 'exhausted' };

/**
 * The lowest id ≥ min in none of the sets (ids above VMID_MAX mean none is left), by walking
 * them: O(n). The stores answer the same question in O(log n) (VmidStore.nextFree); this
 * stays as the plain statement of what they compute (tests compare against it).
 */
export function lowestFree(min: number, ...used: Iterable<number>[]): number {
  const seen = new Set<number>();
  for (const it of used) for (const v of it) if (v >= min) seen.add(v);
  let candidate = min;
  while (seen.has(candidate)) candidate++;
  return candidate;
}
