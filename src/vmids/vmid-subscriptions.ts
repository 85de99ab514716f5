import type { Logger } from 'pino';
import { EventStream } from './event-stream.js';
import { LapseSweeper } from './lapse-sweeper.js';
import { SpaceSubscription } from './space-subscription.js';
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

  private subscribe(
    nodes: readonly NodeRef[],
    single: boolean,
    afterVersion?: number,
    followUser?: string,
  ): AsyncIterableIterator<VmidEvent> {
    const deps = { store: this.store, lapses: this.lapses, log: this.log, onSpaceWatched: this.onSpaceWatched };
    return new EventStream<VmidEvent>((push, stop) =>
      new SpaceSubscription(deps, nodes, single, push, stop).run(afterVersion, followUser, (spaceId, after) =>
        this.replayable(spaceId, after),
      ),
    );
  }

  /**
   * The retained events of the space after `afterVersion`, when they are all there: every
   * version from afterVersion + 1 to the current one, none older than EVENT_LOG_MAX_AGE_MS.
   * null when the subscriber must start over (SYNC).
   */
  private async replayable(
    spaceId: string,
    afterVersion: number,
  ): Promise<{ version: number; events: VmidEvent[] } | null> {
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
