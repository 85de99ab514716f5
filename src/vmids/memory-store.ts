import { randomUUID } from 'node:crypto';
import { NotFoundError } from '../errors.js';
import type { NodeRef, VmidEvent, VmidEventKind } from './types.js';
import { VMID_MAX } from './types.js';
import {
  lowestFree,
  type FilledSnapshot,
  type RefreshOutcome,
  type ReserveOutcome,
  type ReserveRequest,
  type VmidSnapshot,
  type VmidStore,
} from './store.js';

interface NodeState {
  cache: { taken: Set<number>; refreshedAt: number; expiresAt: number } | null;
  /** vmid → expiry (ms) */
  reservations: Map<number, number>;
  version: number;
  /** Identity of the last announced taken set: a fill after expiry only counts if it differs. */
  digest: string | null;
  epoch: number;
  lock: { token: string; until: number } | null;
  /** The node was deleted (forget): a tombstone, kept for the life of the process. */
  deleted: boolean;
}

/**
 * The embedded-mode store: the same semantics as RedisVmidStore (TTLs, versions, atomic
 * reservations, events in version order) inside one process. Everything a method does
 * happens synchronously, so each method is atomic just like a Lua script is in Redis.
 */
export class MemoryVmidStore implements VmidStore {
  private readonly nodes = new Map<string, NodeState>();
  private readonly listeners = new Map<string, Set<(event: VmidEvent) => void>>();
  private readonly now: () => number;

  constructor(opts: { now?: () => number } = {}) {
    this.now = opts.now ?? Date.now;
  }

  /** The node's state, its expired set dropped. */
  private node(nodeId: string): NodeState {
    let s = this.nodes.get(nodeId);
    if (!s) {
      s = { cache: null, reservations: new Map(), version: 0, digest: null, epoch: 0, lock: null, deleted: false };
      this.nodes.set(nodeId, s);
    }
    if (s.cache && s.cache.expiresAt <= this.now()) s.cache = null;
    return s;
  }

  /**
   * Ends the reservations whose time is up, announced as one RELEASED (the Lua lapse()): at
   * the same points as the Redis scripts, so both stores number events alike.
   */
  private lapse(node: NodeRef, s: NodeState): void {
    const now = this.now();
    const lapsed: number[] = [];
    for (const [vmid, until] of s.reservations) {
      if (until > now) continue;
      s.reservations.delete(vmid);
      lapsed.push(vmid);
    }
    if (lapsed.length > 0) this.bump(node, s, 'RELEASED', sorted(lapsed));
  }

  private bump(node: NodeRef, s: NodeState, kind: VmidEventKind, vmids: number[] | null, expiresAt?: number): number {
    s.version += 1;
    const event: VmidEvent = { nodeId: node.id, kind, version: s.version, at: new Date(this.now()), vmids };
    if (expiresAt !== undefined) event.expiresAt = new Date(expiresAt);
    for (const listener of [...(this.listeners.get(node.userId) ?? [])]) {
      try {
        listener(event);
      } catch {
        // A subscriber's failure must not undo or block the change.
      }
    }
    return s.version;
  }

  async read(node: NodeRef): Promise<VmidSnapshot> {
    const s = this.node(node.id);
    this.lapse(node, s);
    return {
      version: s.version,
      cache: s.cache
        ? { taken: sorted(s.cache.taken), refreshedAt: new Date(s.cache.refreshedAt), expiresAt: new Date(s.cache.expiresAt) }
        : null,
      reserved: [...s.reservations]
        .sort(([a], [b]) => a - b)
        .map(([vmid, until]) => ({ vmid, expiresAt: new Date(until) })),
    };
  }

  async state(nodeId: string) {
    const s = this.node(nodeId);
    return { version: s.version, epoch: s.epoch, deleted: s.deleted };
  }

  async refresh(node: NodeRef, taken: readonly number[], ttlSeconds: number, expectedEpoch: number | null): Promise<RefreshOutcome> {
    const s = this.node(node.id);
    if (s.deleted) throw new NotFoundError('Node', node.id);
    if (expectedEpoch !== null && expectedEpoch !== s.epoch) return { written: false, version: s.version };
    this.lapse(node, s);
    const now = this.now();
    const set = new Set(taken);
    const list = sorted(set);
    s.cache = { taken: set, refreshedAt: now, expiresAt: now + ttlSeconds * 1000 };
    const digest = list.join(',');
    const changed = digest !== s.digest;
    if (changed) {
      s.digest = digest;
      this.bump(node, s, 'REFRESHED', list);
    }
    return { written: true, changed, snapshot: (await this.read(node)) as FilledSnapshot };
  }

  async invalidate(node: NodeRef) {
    const s = this.node(node.id);
    if (s.deleted) throw new NotFoundError('Node', node.id);
    const existed = s.cache !== null;
    s.cache = null;
    s.digest = null;
    s.epoch += 1;
    return { existed, version: this.bump(node, s, 'INVALIDATED', null) };
  }

  async reserve(node: NodeRef, request: ReserveRequest): Promise<ReserveOutcome> {
    const s = this.node(node.id);
    if (!s.cache) return { status: 'miss' };
    this.lapse(node, s);
    let vmid: number;
    if (request.vmid !== null) {
      vmid = request.vmid;
      if (s.cache.taken.has(vmid)) return { status: 'taken', vmid };
      if (s.reservations.has(vmid)) return { status: 'already-reserved', vmid };
    } else {
      vmid = lowestFree(request.min, s.cache.taken, s.reservations.keys());
      if (vmid > VMID_MAX) return { status: 'exhausted' };
    }
    const expiresAt = this.now() + request.ttlSeconds * 1000;
    s.reservations.set(vmid, expiresAt);
    const version = this.bump(node, s, 'RESERVED', [vmid], expiresAt);
    return { status: 'reserved', vmid, expiresAt: new Date(expiresAt), version };
  }

  async release(node: NodeRef, vmid: number) {
    const s = this.node(node.id);
    this.lapse(node, s);
    if (!s.reservations.delete(vmid)) return false;
    this.bump(node, s, 'RELEASED', [vmid]);
    return true;
  }

  async consume(node: NodeRef, vmid: number) {
    const s = this.node(node.id);
    this.lapse(node, s);
    const released = s.reservations.delete(vmid);
    const added = s.cache !== null && !s.cache.taken.has(vmid);
    if (added && s.cache) {
      s.cache.taken.add(vmid);
      const list = sorted(s.cache.taken);
      s.digest = list.join(',');
      this.bump(node, s, 'REFRESHED', list);
    } else if (released) {
      this.bump(node, s, 'RELEASED', [vmid]);
    }
    return { released, added };
  }

  async expireDue(node: NodeRef) {
    const s = this.node(node.id);
    this.lapse(node, s);
    let next = Infinity;
    for (const until of s.reservations.values()) next = Math.min(next, until);
    return { nextInMs: next === Infinity ? null : Math.max(0, next - this.now()) };
  }

  /** As FORGET: DELETED, then a tombstone that refresh and invalidate refuse. */
  async forget(node: NodeRef) {
    const s = this.node(node.id);
    if (s.deleted) return;
    this.bump(node, s, 'DELETED', null);
    Object.assign(s, { cache: null, reservations: new Map(), digest: null, lock: null, deleted: true });
  }

  async tryLock(nodeId: string, ttlMs: number) {
    const s = this.node(nodeId);
    const now = this.now();
    if (s.lock && s.lock.until > now) return null;
    s.lock = { token: randomUUID(), until: now + ttlMs };
    return s.lock.token;
  }

  async unlock(nodeId: string, token: string) {
    const s = this.nodes.get(nodeId);
    if (s?.lock?.token === token) s.lock = null;
  }

  async isLocked(nodeId: string) {
    const lock = this.nodes.get(nodeId)?.lock;
    return lock != null && lock.until > this.now();
  }

  async listen(userId: string, onEvent: (event: VmidEvent) => void) {
    let set = this.listeners.get(userId);
    if (!set) this.listeners.set(userId, (set = new Set()));
    // A wrapper per call, so the same function listening twice is two listeners.
    const listener = (e: VmidEvent) => onEvent(e);
    set.add(listener);
    return () => {
      const current = this.listeners.get(userId);
      if (!current) return;
      current.delete(listener);
      if (current.size === 0) this.listeners.delete(userId);
    };
  }

  /** Local listeners (tests check that unsubscribing leaves none behind). */
  listenerCount(userId?: string): number {
    if (userId !== undefined) return this.listeners.get(userId)?.size ?? 0;
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }

  async close() {
    this.listeners.clear();
  }
}

function sorted(values: Iterable<number>): number[] {
  return [...values].sort((a, b) => a - b);
}
