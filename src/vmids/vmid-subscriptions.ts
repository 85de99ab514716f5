import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { EventStream } from './event-stream.js';
import { LapseSweeper } from './lapse-sweeper.js';
import { spaceRef } from './spaces.js';
import type { VmidStore } from './store.js';
import type { NodeRef, VmidEvent } from './types.js';

export interface VmidSubscriptionsOptions {
  store: VmidStore;
  log?: Logger | undefined;
  onSpaceWatched?: ((node: NodeRef) => () => void) | undefined;
}

/** Retained events older than this are not replayed (a subscriber that far behind re-reads). */
const EVENT_LOG_MAX_AGE_MS = 3_600_000;

/** How often a subscription retries reading versions after a pub/sub reconnect. */
const RESYNC_RETRY_MS = 250;

/**
 * Live VMID events of nodes: SYNC first (or a replay of what was missed), then each change of
 * their VMID spaces, under each registration's id; lapsing reservations announced while a
 * space has subscribers here.
 */
export class VmidSubscriptions {
  private readonly store: VmidStore;
  private readonly log: Logger | undefined;
  private readonly onSpaceWatched: ((node: NodeRef) => () => void) | undefined;
  /** Announces lapsed reservations of the nodes this process has subscribers of. */
  private readonly lapses: LapseSweeper;

  constructor(opts: VmidSubscriptionsOptions) {
    this.store = opts.store;
    this.log = opts.log;
    this.onSpaceWatched = opts.onSpaceWatched;
    this.lapses = new LapseSweeper(this.store, this.log);
  }

  /** Ends the lapse timers. */
  close(): void {
    this.lapses.close();
  }

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
  if (!copies) relabelled.set(event, (copies = new Map()));
  let copy = copies.get(nodeId);
  if (!copy) copies.set(nodeId, (copy = { ...event, nodeId }));
  return copy;
}
