import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Push, Stop } from './event-stream.js';
import type { LapseSweeper } from './lapse-sweeper.js';
import { spaceRef } from './spaces.js';
import type { VmidStore } from './store.js';
import type { NodeRef, VmidEvent } from './types.js';

/** How often a subscription retries reading versions after a pub/sub reconnect. */
const RESYNC_RETRY_MS = 250;

/** What one subscription shares with the others of its instance. */
export interface SpaceSubscriptionDeps {
  store: VmidStore;
  lapses: LapseSweeper;
  log: Logger | undefined;
  onSpaceWatched: ((node: NodeRef) => () => void) | undefined;
}

/** The events missed since a version, when they are all still kept (vmid-subscriptions.ts). */
export type Replay = (
  spaceId: string,
  afterVersion: number,
) => Promise<{ version: number; events: VmidEvent[] } | null>;

/**
 * One subscriber's events of its nodes' VMID spaces. The store publishes each change once per
 * space (cluster), named by the space; each registration of the subscriber in that space
 * receives it under its own id. Versions, floors and DELETED are the space's.
 */
export class SpaceSubscription {
  /** space → the subscriber's registrations in it */
  private readonly registrations = new Map<string, string[]>();
  /**
   * Until the SYNCs are out (null), live events wait in `early`; afterwards an event passes
   * only if it is newer than what this subscriber has been told (so nothing is lost or
   * repeated between "listening" and "read the version").
   */
  private floors: Map<string, number> | null = null;
  private readonly early: VmidEvent[] = [];
  /**
   * The spaces this subscription covers, watched for lapsing reservations (and, through
   * onSpaceWatched, for guests created or destroyed behind pvegraph's back).
   */
  private readonly watched = new Map<string, () => void>();
  /** Spaces whose DELETED was delivered: nothing more comes of them. */
  private readonly deleted = new Set<string>();
  private readonly unlisten: Array<() => void> = [];
  private active = true;
  private resyncing = false;

  constructor(
    private readonly deps: SpaceSubscriptionDeps,
    private readonly nodes: readonly NodeRef[],
    /** A node's own subscription: it completes once its space is gone. */
    private readonly single: boolean,
    private readonly push: Push<VmidEvent>,
    private readonly stop: Stop,
  ) {
    for (const node of nodes) {
      const ids = this.registrations.get(node.spaceId) ?? [];
      if (!ids.includes(node.id)) ids.push(node.id);
      this.registrations.set(node.spaceId, ids);
    }
  }

  /** Listens, announces (SYNC, or the replay after `afterVersion`), then delivers until stopped. */
  async run(afterVersion: number | undefined, followUser: string | undefined, replay: Replay): Promise<void> {
    const { store } = this.deps;
    const spaces = [...this.registrations.keys()];
    try {
      if (followUser !== undefined)
        this.unlisten.push(await store.listenRegistrations(followUser, (ref) => void this.registered(ref)));
      for (const spaceId of spaces) this.unlisten.push(await store.listen(spaceId, this.deliver, this.resyncLater));
      const states = await Promise.all(spaces.map(async (id) => [id, await store.state(id)] as const));
      const replays = await Promise.all(
        spaces.map((id) => (afterVersion === undefined ? Promise.resolve(null) : replay(id, afterVersion))),
      );
      const floors = (this.floors = new Map<string, number>());
      for (const [i, [spaceId, state]] of states.entries()) {
        const replayed = replays[i];
        if (!replayed) {
          this.announce(floors, spaceId, state);
          continue;
        }
        // Resumed: what was missed, in order; the floor is where the replay ends.
        floors.set(spaceId, replayed.version);
        for (const event of replayed.events) {
          this.sendAs(spaceId, event);
          if (event.kind === 'DELETED') this.ended(spaceId);
        }
      }
      for (const event of this.early.splice(0)) this.deliver(event);
      for (const spaceId of spaces) this.watch(spaceId);
    } catch (err) {
      this.release();
      this.stop(err);
      return;
    }
    await this.stop;
    this.active = false;
    this.release();
  }

  private release(): void {
    for (const u of this.unlisten) u();
    for (const unwatch of this.watched.values()) unwatch();
  }

  private watch(spaceId: string): void {
    if (this.watched.has(spaceId) || this.deleted.has(spaceId)) return;
    const unwatchLapses = this.deps.lapses.watch(spaceRef(spaceId));
    const first = this.nodes.find((n) => n.spaceId === spaceId);
    const unwatchSpace = first && this.deps.onSpaceWatched ? this.deps.onSpaceWatched(first) : undefined;
    this.watched.set(spaceId, () => {
      unwatchLapses();
      unwatchSpace?.();
    });
  }

  private readonly deliver = (event: VmidEvent): void => {
    const space = event.nodeId;
    if (!this.registrations.has(space)) return;
    // Nothing follows a space's DELETED (an instance of an earlier version, during a rolling
    // upgrade, may still write a deleted node's keys: its events are not passed on).
    if (this.deleted.has(space)) return;
    if (event.kind === 'RESERVED') this.deps.lapses.observe(event);
    if (!this.floors) {
      this.early.push(event);
      return;
    }
    if (event.registration !== undefined) {
      this.registrationGone(space, event);
      return;
    }
    if (event.version <= (this.floors.get(space) ?? 0)) return;
    this.floors.set(space, event.version);
    this.sendAs(space, event);
    if (event.kind === 'DELETED') this.ended(space);
  };

  /**
   * One registration of a shared space was deleted: its subscribers are told DELETED (at the
   * space's version, which this does not change) and get nothing more of it; the space goes
   * on for the subscriber's other registrations of it.
   */
  private registrationGone(space: string, event: VmidEvent): void {
    const ids = this.registrations.get(space) ?? [];
    const gone = event.registration!;
    if (!ids.includes(gone)) return;
    this.send({ ...event, nodeId: gone, version: Math.max(event.version, this.floors?.get(space) ?? 0) });
    const left = ids.filter((id) => id !== gone);
    if (left.length > 0) {
      this.registrations.set(space, left);
      return;
    }
    this.registrations.delete(space);
    this.ended(space);
  }

  /** The space's DELETED went out: nothing more comes of it. */
  private ended(spaceId: string): void {
    this.deleted.add(spaceId);
    this.watched.get(spaceId)?.();
    this.watched.delete(spaceId);
    // A node's own subscription has nothing left to follow: it completes.
    if (this.single) this.stop();
  }

  /** The space's first event, or the one after an outage: SYNC, or DELETED if it is gone. */
  private announce(known: Map<string, number>, spaceId: string, state: { version: number; deleted: boolean }): void {
    known.set(spaceId, state.version);
    this.sendAs(spaceId, stateEvent(spaceId, state.deleted ? 'DELETED' : 'SYNC', state.version));
    if (state.deleted) this.ended(spaceId);
  }

  /** One copy per registration of the subscriber in the space, under its id. */
  private sendAs(spaceId: string, event: VmidEvent): void {
    for (const nodeId of this.registrations.get(spaceId) ?? []) this.send(labelled(event, nodeId));
  }

  /**
   * A consumer that stopped reading (EventStream allows 1024 pending events) is ended with an
   * error rather than silently losing events.
   */
  private send(event: VmidEvent): void {
    try {
      this.push(event);
    } catch (err) {
      this.stop(err);
    }
  }

  private readonly resyncLater = (): void => void this.resync();

  /**
   * Back from a pub/sub outage: events may have been missed; a SYNC with a newer version tells
   * the subscriber to re-read. The command connection may come back later than the pub/sub
   * one, so reading the versions is retried while the subscription lasts.
   */
  private async resync(): Promise<void> {
    if (this.resyncing) return;
    this.resyncing = true;
    try {
      for (let attempt = 0; this.active && this.floors; attempt++) {
        const floors = this.floors;
        try {
          for (const spaceId of [...floors.keys()]) {
            if (this.deleted.has(spaceId)) continue;
            const state = await this.deps.store.state(spaceId);
            // Its DELETED may have arrived while the state was read.
            if (!this.active || this.deleted.has(spaceId)) continue;
            // Not only "newer": a Redis that lost its data (restart without persistence,
            // failover) starts versions again; the lower floor lets new events through.
            // A space deleted during the outage: its DELETED was missed, its tombstone says so.
            if (state.deleted || state.version !== (floors.get(spaceId) ?? 0)) this.announce(floors, spaceId, state);
          }
          // A RESERVED missed meanwhile did not move its space's lapse timer.
          if (this.active) this.deps.lapses.resweep(this.watched.keys());
          return;
        } catch (err) {
          if (attempt === 0)
            this.deps.log?.warn({ err: { message: (err as Error).message } }, 'vmid events: resync delayed');
          await sleep(RESYNC_RETRY_MS);
        }
      }
    } finally {
      this.resyncing = false;
    }
  }

  /**
   * A node the user registered after subscribing (every node of theirs): followed from its
   * first change on, as the others (no SYNC).
   */
  private async registered(ref: NodeRef): Promise<void> {
    if (!this.active) return;
    const ids = this.registrations.get(ref.spaceId);
    if (ids) {
      if (!ids.includes(ref.id)) ids.push(ref.id);
      return;
    }
    this.registrations.set(ref.spaceId, [ref.id]);
    this.deleted.delete(ref.spaceId);
    try {
      const stopListening = await this.deps.store.listen(ref.spaceId, this.deliver, this.resyncLater);
      if (!this.active) return stopListening();
      this.unlisten.push(stopListening);
      const { version } = await this.deps.store.state(ref.spaceId);
      // Stopped meanwhile: release() has run, and a watch started now would never end.
      if (!this.active) return;
      if (this.floors && !this.floors.has(ref.spaceId)) this.floors.set(ref.spaceId, version);
      this.watch(ref.spaceId);
    } catch (err) {
      this.deps.log?.warn(
        { err: { message: (err as Error).message } },
        'vmid events: could not follow a new node; subscribe again',
      );
    }
  }
}

/**
 * An event read from the node's state rather than published: SYNC (its current version), or
 * DELETED from its tombstone (the published one was missed, or came before subscribing).
 */
function stateEvent(nodeId: string, kind: 'SYNC' | 'DELETED', version: number): VmidEvent {
  return { nodeId, kind, version, at: new Date(), vmids: null, added: [], removed: [] };
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
  if (!copies) relabelled.set(event, (copies = new Map<string, VmidEvent>()));
  let copy = copies.get(nodeId);
  if (!copy) copies.set(nodeId, (copy = { ...event, nodeId }));
  return copy;
}
