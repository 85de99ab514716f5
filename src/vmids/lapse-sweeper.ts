import type { Logger } from 'pino';
import type { VmidStore } from './store.js';
import type { NodeRef, VmidEvent } from './types.js';

/**
 * After a reservation's expiry, how long the timer waits before asking the store: Redis's
 * clock decides what is due, and an instance's timer may run a little ahead of it.
 */
const SLACK_MS = 20;
/** After a failed sweep (store unreachable), when to try again. */
const RETRY_MS = 5_000;

interface Watched {
  node: NodeRef;
  /** Local subscriptions that cover the node. */
  refs: number;
  timer: NodeJS.Timeout | undefined;
  /** performance.now() at which the timer fires. */
  due: number;
  /**
   * A sweep is in flight; requests meanwhile (every subscription of the node resweeps after a
   * reconnect) make one more sweep after it, not one each.
   */
  sweeping: boolean;
  again: boolean;
}

/**
 * Announces reservations that lapse by themselves (RELEASED), for the nodes this instance has
 * subscribers of, so a live UI learns that a VMID is free again when it happens rather than
 * at its next read. Each watched node has one timer, at its earliest reservation's expiry,
 * taken from the store when the node is first watched and moved earlier by RESERVED events
 * (which carry their expiry). When it fires the store ends what is due, atomically: with
 * several instances watching one node, the first to ask announces the lapse and the others
 * find nothing. Nodes nobody subscribes to are not swept; their lapses are announced by the
 * next operation that looks at their reservations (every store method does).
 */
export class LapseSweeper {
  private readonly nodes = new Map<string, Watched>();
  /** The last sweep failed: logged once per outage, not once per node and retry. */
  private failing = false;
  private closed = false;
  /** Every local subscription sees the same event object: only the first needs looking at. */
  private lastObserved: VmidEvent | null = null;

  constructor(
    private readonly store: Pick<VmidStore, 'expireDue'>,
    private readonly log?: Logger,
  ) {}

  /** One more local subscription covers the node; the returned function ends it. */
  watch(node: NodeRef): () => void {
    if (this.closed) return () => undefined;
    let entry = this.nodes.get(node.id);
    if (!entry) {
      const created: Watched = { node, refs: 0, timer: undefined, due: Infinity, sweeping: false, again: false };
      entry = created;
      this.nodes.set(node.id, created);
      // Not synchronously: watch() runs inside an event's delivery, and the in-process store
      // would announce a lapse in the middle of delivering that event to its listeners.
      queueMicrotask(() => void this.sweep(created));
    }
    entry.refs++;
    const watched = entry;
    let active = true;
    return () => {
      if (!active) return;
      active = false;
      if (--watched.refs > 0 || this.nodes.get(node.id) !== watched) return;
      clearTimeout(watched.timer);
      this.nodes.delete(node.id);
    };
  }

  /** Sees every event a local subscription receives; RESERVED may bring the next lapse closer. */
  observe(event: VmidEvent): void {
    if (event.kind !== 'RESERVED' || !event.expiresAt || event === this.lastObserved) return;
    this.lastObserved = event;
    const entry = this.nodes.get(event.nodeId);
    // Both times are the store's: the delay does not depend on this instance's clock.
    if (entry) this.arm(entry, event.expiresAt.getTime() - event.at.getTime());
  }

  /**
   * Sweeps the given watched nodes now: after a lost pub/sub connection is back, RESERVED
   * events (and the timers they would have moved) may have been missed.
   */
  resweep(nodeIds: Iterable<string>): void {
    for (const nodeId of nodeIds) {
      const entry = this.nodes.get(nodeId);
      if (entry) void this.sweep(entry);
    }
  }

  /** Nodes with a timer or a sweep pending (tests, metrics). */
  watchedCount(): number {
    return this.nodes.size;
  }

  close(): void {
    this.closed = true;
    for (const entry of this.nodes.values()) clearTimeout(entry.timer);
    this.nodes.clear();
  }

  private arm(entry: Watched, inMs: number): void {
    const due = performance.now() + Math.max(0, inMs) + SLACK_MS;
    if (entry.timer !== undefined && entry.due <= due) return;
    clearTimeout(entry.timer);
    entry.due = due;
    // unref: a pending lapse must not keep a stopping process alive (close() clears it too).
    entry.timer = setTimeout(() => {
      entry.timer = undefined;
      entry.due = Infinity;
      void this.sweep(entry);
    }, due - performance.now()).unref();
  }

  private async sweep(entry: Watched): Promise<void> {
    if (entry.sweeping) {
      entry.again = true;
      return;
    }
    entry.sweeping = true;
    entry.again = false;
    let nextInMs: number | null;
    try {
      ({ nextInMs } = await this.store.expireDue(entry.node));
      this.failing = false;
    } catch (err) {
      if (!this.failing) {
        this.log?.warn(
          { err: { message: (err as Error).message }, nodeId: entry.node.id },
          'vmid reservations: lapse sweep failed; retrying',
        );
      }
      this.failing = true;
      nextInMs = RETRY_MS;
    } finally {
      entry.sweeping = false;
    }
    if (this.nodes.get(entry.node.id) !== entry) return;
    if (entry.again) return this.sweep(entry);
    if (nextInMs !== null) this.arm(entry, nextInMs);
  }
}
