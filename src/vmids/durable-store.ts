import type { Logger } from 'pino';
import { DomainError, ErrorCode } from '../errors.js';
import type { ReservationRecord } from './reservation-record.js';
import type {
  GuestListing,
  HeldReservation,
  RefusedReservation,
  ReserveOutcome,
  ReserveRequest,
  VmidStore,
} from './store.js';
import type { NodeRef, VmidEvent } from './types.js';

/** How often a reservation is tried again when the record refuses what the fast store chose. */
const RECORD_CONFLICT_ATTEMPTS = 3;

/**
 * Reservations that survive the loss of every Redis key and the restart of every instance:
 * the fast store (Redis, or memory when embedded) makes the one atomic decision per
 * reservation, as always; the database keeps every reservation it made before the answer
 * goes out, and gives them back to a fast store that lost them (its `seeder` is the record's
 * `live`). Everything else passes straight through.
 *
 * Nothing is half-written: a reservation the record cannot keep is ended in the fast store
 * and the request fails; a reservation the record already holds for someone else (the fast
 * store lost it without losing its seeded mark: a failover to a replica behind) is put back
 * into the fast store in place of the refused one, with every other live one of the space,
 * and another VMID is chosen.
 */
export class DurableVmidStore implements VmidStore {
  /** The highest version recorded per space by this instance (writes only what is newer). */
  private readonly recorded = new Map<string, number>();

  constructor(
    private readonly fast: VmidStore,
    private readonly record: ReservationRecord,
    private readonly log?: Logger,
  ) {}

  /**
   * Records that the space reached `version`, in the background and only when newer than
   * what this instance recorded: a space that Redis loses goes on from there. Reservations
   * record it with their row; changes without a row (fills, invalidations, lapses seen by a
   * read) are recorded moments after they are announced.
   */
  private reached(spaceId: string, version: number): void {
    if (version <= (this.recorded.get(spaceId) ?? 0)) return;
    if (this.recorded.size >= 100_000) this.recorded.clear();
    this.recorded.set(spaceId, version);
    this.record.reached(spaceId, version).catch((err: unknown) => {
      this.recorded.delete(spaceId);
      this.log?.debug({ err: { message: (err as Error).message }, spaceId }, 'could not record a VMID space version');
    });
  }

  reserveMany(node: NodeRef, requests: readonly ReserveRequest[]): Promise<ReserveOutcome[]> {
    return this.reserveRecorded(node, requests, 1);
  }

  /**
   * The fast store decides, the record keeps what it decided, then the answers go out. A
   * reservation the record refuses (it holds a live one of the VMID: the fast store lost it)
   * gives way to the record's in the fast store, every live one of the space goes back there
   * (putBackLost), and another VMID is chosen (RECORD_CONFLICT_ATTEMPTS), or with a vmid:
   * already reserved.
   */
  private async reserveRecorded(
    node: NodeRef,
    requests: readonly ReserveRequest[],
    attempt: number,
  ): Promise<ReserveOutcome[]> {
    const outcomes = await this.fast.reserveMany(node, requests);
    const made: Array<{ index: number; held: HeldReservation }> = [];
    /**
     * VMIDs made a second time in this batch: the fast store decides a batch in parts (the
     * Redis store: scripts of at most 8) and lost the space between two of them, so a later
     * part ran on the record's reservations, which lack the earlier parts'. The first stands;
     * the later one gives way as a reservation the record refuses does.
     */
    const again: typeof made = [];
    const seen = new Set<number>();
    let version = 0;
    outcomes.forEach((o, index) => {
      if (o.status !== 'reserved') return;
      const m = { index, held: { vmid: o.vmid, owner: requests[index]!.owner, expiresAt: o.expiresAt } };
      if (seen.has(o.vmid)) again.push(m);
      else made.push(m);
      seen.add(o.vmid);
      version = Math.max(version, o.version);
    });
    if (made.length === 0) return outcomes;
    let kept: Set<number>;
    try {
      kept = await this.record.putMany(
        node.id,
        made.map((m) => m.held),
        version,
      );
      this.recorded.set(node.id, Math.max(this.recorded.get(node.id) ?? 0, version));
    } catch (err) {
      await Promise.all(
        [...made, ...again].map((m) => this.fast.release(node, m.held.vmid, m.held.owner).catch(() => undefined)),
      );
      throw recordUnavailable(err);
    }
    const refused = [...made.filter((m) => !kept.has(m.held.vmid)), ...again];
    if (refused.length === 0) return outcomes;
    await this.putBackLost(
      node,
      refused.map((m) => m.held),
    );
    const retry = refused.filter(({ index }) => requests[index]!.vmid === null && attempt < RECORD_CONFLICT_ATTEMPTS);
    const retried =
      retry.length > 0
        ? await this.reserveRecorded(
            node,
            retry.map(({ index }) => requests[index]!),
            attempt + 1,
          )
        : [];
    for (const { index, held } of refused) outcomes[index] = { status: 'already-reserved', vmid: held.vmid };
    retry.forEach(({ index }, i) => (outcomes[index] = retried[i]!));
    return outcomes;
  }

  /**
   * `refused` must not stand: the record holds live reservations of their VMIDs, which the fast
   * store lost (a failover to a replica behind, keys lost one by one). Each is replaced by the
   * record's in one atomic step (settleRefused: the VMID is never free meanwhile, and a
   * reservation made of it since is left alone). Then every other live reservation of the
   * space the fast store lacks goes back, not only the ones met here (each retry would meet
   * the next lost one): only those missing from what the fast store showed before the record
   * was read, so a row of one released or consumed meanwhile does not come back (those end in
   * the record first). When the record or the fast store cannot be read, or the put-back
   * fails, that is logged: the retry that follows meets the lost rows again.
   */
  private async putBackLost(node: NodeRef, refused: readonly HeldReservation[]): Promise<void> {
    const shown = await this.fast.read(node).catch(() => null);
    let live: HeldReservation[] | null = null;
    try {
      live = await this.record.live(node.id);
    } catch (err) {
      this.log?.warn({ err: { message: (err as Error).message }, spaceId: node.id }, 'could not read the record');
    }
    // Without the record's rows the refused ones still end (the record refuses their VMIDs).
    const byVmid = await this.settleAgainst(node, refused, live ?? []);
    if (!shown || !live) return;
    const had = new Set([...shown.reserved, ...refused.map((r) => r.vmid)]);
    const lost = live.filter((r) => !had.has(r.vmid));
    this.log?.warn(
      { spaceId: node.id, met: refused.length, lost: lost.length },
      'vmid store had lost reservations the record holds; put back',
    );
    await this.fast.restore(node, lost).catch((err: unknown) => {
      this.log?.warn({ err: { message: (err as Error).message }, spaceId: node.id }, 'could not put reservations back');
    });
    await this.endReleasedMeanwhile(node, [...refused.flatMap((r) => byVmid.get(r.vmid) ?? []), ...lost]);
  }

  /**
   * settleRefused of `refused`, each against the record's live row of its VMID (`live`; none:
   * it ends); answers those rows by VMID.
   */
  private async settleAgainst(
    node: NodeRef,
    refused: readonly HeldReservation[],
    live: readonly HeldReservation[],
  ): Promise<Map<number, HeldReservation>> {
    const byVmid = new Map(live.map((r) => [r.vmid, r]));
    await this.fast.settleRefused(
      node,
      refused.map((r) => ({ refused: r, row: byVmid.get(r.vmid) ?? null })),
    );
    return byVmid;
  }

  /**
   * Rows put back whose holder released them (or that were consumed) after the record was
   * read: the release found them missing from the fast store, so they would live on there
   * until their expiry. Read the record again and end those, each exactly that reservation
   * (settleRefused: one made of the VMID since stands). A release after this read finds them
   * in the fast store and ends them itself.
   */
  private async endReleasedMeanwhile(node: NodeRef, putBack: readonly HeldReservation[]): Promise<void> {
    if (putBack.length === 0) return;
    try {
      const live = await this.record.live(node.id);
      const key = (r: HeldReservation) => `${r.vmid}/${r.owner}/${r.expiresAt.getTime()}`;
      const still = new Set(live.map(key));
      const gone = putBack.filter((r) => !still.has(key(r)));
      if (gone.length === 0) return;
      await this.settleAgainst(node, gone, live);
    } catch (err) {
      this.log?.warn(
        { err: { message: (err as Error).message }, spaceId: node.id },
        'could not check the put-back reservations against the record',
      );
    }
  }

  /**
   * Ends it in both, the record first: a put-back (putBackLost) that read the fast store before
   * and the record after this never finds a row the fast store no longer has. true when either
   * held it (the fast store may have lost it).
   */
  async release(node: NodeRef, vmid: number, owner: string): Promise<boolean> {
    const removed = await this.record.remove(node.id, vmid, owner).catch((err: unknown) => {
      throw recordUnavailable(err);
    });
    const released = await this.fast.release(node, vmid, owner);
    return released || removed;
  }

  /** As release, the record first. */
  async consume(node: NodeRef, vmid: number) {
    await this.record.remove(node.id, vmid, null);
    return this.fast.consume(node, vmid);
  }

  holder(node: NodeRef, vmid: number) {
    return this.fast.holder(node, vmid);
  }
  announceGone(node: NodeRef, registrationId: string) {
    return this.fast.announceGone(node, registrationId);
  }

  async forget(node: NodeRef): Promise<void> {
    await this.fast.forget(node);
    await this.record.removeSpace(node.id);
  }

  revive(node: NodeRef) {
    return this.fast.revive(node);
  }
  async read(node: NodeRef) {
    const snapshot = await this.fast.read(node);
    this.reached(node.id, snapshot.version);
    return snapshot;
  }
  state(nodeId: string) {
    return this.fast.state(nodeId);
  }
  async refresh(node: NodeRef, taken: readonly number[], ttlSeconds: number, expectedEpoch: number | null) {
    const outcome = await this.fast.refresh(node, taken, ttlSeconds, expectedEpoch);
    this.reached(node.id, outcome.written ? outcome.snapshot.version : outcome.version);
    return outcome;
  }
  async refreshSet(node: NodeRef, taken: readonly number[], ttlSeconds: number, expectedEpoch: number | null) {
    const outcome = await this.fast.refreshSet(node, taken, ttlSeconds, expectedEpoch);
    this.reached(node.id, outcome.version);
    return outcome;
  }
  isCached(node: NodeRef) {
    return this.fast.isCached(node);
  }
  async invalidate(node: NodeRef) {
    const outcome = await this.fast.invalidate(node);
    this.reached(node.id, outcome.version);
    return outcome;
  }
  nextFree(node: NodeRef, min: number, max: number) {
    return this.fast.nextFree(node, min, max);
  }
  expireDue(node: NodeRef) {
    return this.fast.expireDue(node);
  }
  restore(node: NodeRef, held: readonly HeldReservation[]) {
    return this.fast.restore(node, held);
  }
  settleRefused(node: NodeRef, refused: readonly RefusedReservation[]) {
    return this.fast.settleRefused(node, refused);
  }
  putGuests(node: NodeRef, listing: GuestListing) {
    return this.fast.putGuests(node, listing);
  }
  guests(node: NodeRef) {
    return this.fast.guests(node);
  }
  eventsAfter(node: NodeRef, version: number) {
    return this.fast.eventsAfter(node, version);
  }
  tryLock(nodeId: string, ttlMs: number) {
    return this.fast.tryLock(nodeId, ttlMs);
  }
  unlock(nodeId: string, token: string) {
    return this.fast.unlock(nodeId, token);
  }
  isLocked(nodeId: string) {
    return this.fast.isLocked(nodeId);
  }
  announceRegistration(node: NodeRef) {
    return this.fast.announceRegistration(node);
  }
  listenRegistrations(userId: string, onNode: (node: NodeRef) => void) {
    return this.fast.listenRegistrations(userId, onNode);
  }
  listen(channelKey: string, onEvent: (event: VmidEvent) => void, onResync?: () => void) {
    return this.fast.listen(channelKey, onEvent, onResync);
  }
  close() {
    return this.fast.close();
  }
}

function recordUnavailable(cause: unknown): DomainError {
  const err = new DomainError(
    ErrorCode.SERVICE_UNAVAILABLE,
    'The reservation record (database) cannot be reached; nothing was reserved. Try again shortly.',
  );
  (err as { cause?: unknown }).cause = cause;
  return err;
}
