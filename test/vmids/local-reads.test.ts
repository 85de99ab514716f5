import { setTimeout as sleep } from 'node:timers/promises';
import type { RedisClient } from '../../src/redis/redis.js';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { LocalSnapshots } from '../../src/vmids/local-snapshots.js';
import {
  type NodeRef,
  RedisVmidStore,
  VMID_MAX,
  type VmidEvent,
  type VmidService,
  type VmidSnapshot,
} from '../../src/vmids/index.js';
import { uniqueRedisPrefix } from '../support/test-server.js';
import {
  connect,
  eventually,
  LOCAL_READ_MS,
  makeService,
  newNode,
  type OpenStore,
  openStore,
  type Proxmox,
  silentLog,
  startProxmox,
  reserveOne,
} from './helpers.js';

/**
 * VMID_READ_CACHE_MS: an instance answers a node's snapshot from memory, and every change —
 * made by another instance, by itself, by the clock — still reaches its next read.
 */
describe('snapshots kept in memory by a Redis store (two instances)', () => {
  let proxmox: Proxmox;
  let prefix: string;
  let a: OpenStore;
  let b: OpenStore;
  let serviceA: VmidService;
  let node: NodeRef;

  beforeAll(async () => {
    proxmox = await startProxmox({ guests: 10 });
  });
  afterAll(async () => {
    await proxmox.close();
  });
  beforeEach(async () => {
    prefix = uniqueRedisPrefix();
    a = await openStore('redis-local', prefix);
    b = await openStore('redis-local', prefix);
    serviceA = makeService(a.store, proxmox);
    node = newNode();
    await serviceA.getCachedVmids(node);
  });
  afterEach(async () => {
    await a.close();
    await b.close();
  });

  /** Reads on `store` until it keeps the node's snapshot (its pattern subscription is confirmed then). */
  const untilKept = (store: RedisVmidStore, timeoutMs = 3_000) =>
    eventually(
      async () => {
        await store.read(node);
        return store.keptSnapshots() === 1;
      },
      timeoutMs,
      'a kept snapshot',
    );
  const keptOn = async (store: OpenStore) => {
    await untilKept(store.store as RedisVmidStore);
    return store.store.read(node);
  };
  /** Deletes the node's cached set in Redis without an event: only a kept snapshot still shows it. */
  const dropBehindTheBack = (redis: RedisClient) => redis.del(`vmid-cache:{${node.id}}`, `vmid-meta:{${node.id}}`);

  it('answers from memory: a change made in Redis without an event is not seen (and is with VMID_READ_CACHE_MS=0)', async () => {
    const kept = await keptOn(b);
    const plain = await openStore('redis', prefix);
    try {
      await dropBehindTheBack(a.redis!);
      expect((await b.store.read(node)).cache?.taken).toEqual(kept.cache!.taken);
      expect((await plain.store.read(node)).cache).toBeNull();
    } finally {
      await plain.close();
    }
  });

  it('ends after VMID_READ_CACHE_MS even when no event tells of a change', async () => {
    const redis = await connect(prefix);
    const short = new RedisVmidStore(redis, { log: silentLog, localReadMs: 1_500 });
    try {
      await untilKept(short);
      await dropBehindTheBack(redis);
      expect((await short.read(node)).cache).not.toBeNull();
      await sleep(1_600);
      expect((await short.read(node)).cache).toBeNull();
    } finally {
      await short.close();
      await redis.quit();
    }
  });

  it('renews the copy of a node read steadily before it ends, and still sees a change without an event within the bound', async () => {
    const redis = await connect(prefix);
    const sources: string[] = [];
    const boundMs = 2_000;
    const steady = new RedisVmidStore(redis, {
      log: silentLog,
      localReadMs: boundMs,
      onRead: (source) => sources.push(source),
    });
    try {
      await untilKept(steady);
      // Over two bounds of steady reads (every 20 ms), the copy is renewed in the background.
      // Without renewal two reads would wait for Redis (one per bound); one is allowed for a
      // test machine that pauses through a whole renewal window (400 ms).
      sources.length = 0;
      const until = performance.now() + boundMs * 2.25;
      while (performance.now() < until) {
        expect((await steady.read(node)).cache).not.toBeNull();
        await sleep(20);
      }
      expect(sources.filter((s) => s === 'redis').length).toBeLessThanOrEqual(1);
      expect(sources.filter((s) => s === 'renewal').length).toBeGreaterThanOrEqual(2);
      expect(sources.filter((s) => s === 'memory').length).toBeGreaterThan(50);

      // Renewal does not stretch the bound: a change no event tells of shows within it.
      await dropBehindTheBack(redis);
      const dropped = performance.now();
      while ((await steady.read(node)).cache !== null) {
        // (Slack for a pause between the read and this check; renewals that kept the copy would run past it.)
        expect(performance.now() - dropped).toBeLessThan(boundMs + 250);
        await sleep(20);
      }
    } finally {
      await steady.close();
      await redis.quit();
    }
  });

  it("shows another instance's reservation, release and invalidation once their events arrive", async () => {
    const before = await keptOn(b);
    const reserved = await reserveOne(a.store, node, {
      vmid: null,
      min: 100,
      max: VMID_MAX,
      owner: node.userId,
      ttlSeconds: 60,
    });
    if (reserved.status !== 'reserved') throw new Error(reserved.status);
    await eventually(
      async () => (await b.store.read(node)).reserved.includes(reserved.vmid),
      2_000,
      'the reservation on B',
    );
    expect((await b.store.read(node)).version).toBe(before.version + 1);

    await keptOn(b);
    await a.store.release(node, reserved.vmid, node.userId);
    await eventually(async () => (await b.store.read(node)).reserved.length === 0, 2_000, 'the release on B');

    await keptOn(b);
    await a.store.invalidate(node);
    await eventually(async () => (await b.store.read(node)).cache === null, 2_000, 'the invalidation on B');
  });

  it('shows its own changes at once, without waiting for their events', async () => {
    const before = await keptOn(b);
    const reserved = await reserveOne(b.store, node, {
      vmid: 4242,
      min: 100,
      max: VMID_MAX,
      owner: node.userId,
      ttlSeconds: 60,
    });
    expect(reserved.status).toBe('reserved');
    const after = await b.store.read(node);
    expect(after.reserved).toEqual([4242]);
    expect(after.version).toBe(before.version + 1);
    await keptOn(b);
    await b.store.consume(node, 4242);
    const consumed = await b.store.read(node);
    expect(consumed.reserved).toEqual([]);
    expect(consumed.cache!.taken).toContain(4242);
  });

  it('ends when the first reservation lapses, and the next read announces the lapse', async () => {
    await keptOn(b);
    const reserved = await reserveOne(a.store, node, {
      vmid: 4343,
      min: 100,
      max: VMID_MAX,
      owner: node.userId,
      ttlSeconds: 1,
    });
    expect(reserved.status).toBe('reserved');
    const events: VmidEvent[] = [];
    const stop = await b.store.listen(node.spaceId, (e) => events.push(e));
    try {
      expect((await keptOn(b)).reserved).toEqual([4343]);
      await sleep(1_100);
      expect((await b.store.read(node)).reserved).toEqual([]);
      await eventually(
        () => events.some((e) => e.kind === 'RELEASED' && e.vmids?.includes(4343)),
        2_000,
        'the RELEASED event',
      );
    } finally {
      stop();
    }
  });

  it('keeps nothing across a lost pub/sub connection, and keeps again once it is back', async () => {
    // B's own subscriber connection, so the test can cut it.
    const redis = await connect(prefix);
    const subscriber = redis.duplicate();
    const id = await subscriber.client('ID');
    const store = new RedisVmidStore(redis, { log: silentLog, localReadMs: LOCAL_READ_MS, subscriber });
    try {
      await untilKept(store, 5_000);
      const closed = new Promise((resolve) => subscriber.once('close', resolve));
      await a.redis!.client('KILL', 'ID', String(id));
      await closed;
      // Published while B's subscriber is gone: B never receives this event.
      const reserved = await reserveOne(a.store, node, {
        vmid: 4444,
        min: 100,
        max: VMID_MAX,
        owner: node.userId,
        ttlSeconds: 60,
      });
      expect(reserved.status).toBe('reserved');
      expect((await store.read(node)).reserved).toEqual([4444]);
      await untilKept(store, 5_000);
    } finally {
      await store.close();
      subscriber.disconnect();
      await redis.quit();
    }
  });
});

describe('LocalSnapshots', () => {
  let clock = 0;
  const now = () => clock;
  const snapshot = (opts: { expiresAt?: number; reservations?: number[] } = {}): VmidSnapshot => ({
    version: 3,
    cache: { taken: [100, 101], refreshedAt: new Date(0), expiresAt: new Date(opts.expiresAt ?? 1_000_000) },
    reserved: (opts.reservations ?? []).map((_, i) => 200 + i),
    firstExpiry: opts.reservations?.length ? new Date(Math.min(...opts.reservations)) : null,
  });
  beforeEach(() => {
    clock = 1_000;
  });

  it('keeps nothing until events are received', () => {
    const local = new LocalSnapshots(1_000, now);
    expect(local.begin('n')).toBeNull();
    local.resumed();
    local.keep(local.begin('n')!, snapshot(), 0);
    expect(local.get('n')?.version).toBe(3);
  });

  it('does not keep an answer that was on its way when the node changed or events were lost', () => {
    const local = new LocalSnapshots(1_000, now);
    local.resumed();
    const read = local.begin('n')!;
    local.changed('n');
    local.keep(read, snapshot(), 0);
    expect(local.get('n')).toBeNull();
    const other = local.begin('n')!;
    local.changed('m');
    local.keep(other, snapshot(), 0);
    expect(local.get('n')).not.toBeNull();

    const late = local.begin('n')!;
    local.lost();
    expect(local.get('n')).toBeNull();
    local.resumed();
    local.keep(late, snapshot(), 0);
    expect(local.get('n')).toBeNull();
  });

  it('ends at the earliest of its bound, the set expiry and the first reservation expiry, counted from the read', () => {
    const local = new LocalSnapshots(1_000, now);
    local.resumed();
    const cases: Array<[VmidSnapshot, number]> = [
      [snapshot(), 1_000],
      [snapshot({ expiresAt: 50_400 }), 400],
      [snapshot({ reservations: [50_700, 50_300] }), 300],
    ];
    for (const [snap, lifetime] of cases) {
      clock = 1_000;
      const read = local.begin('n')!;
      clock = 1_010; // the answer arrives 10 ms later; Redis's clock read 50,000 meanwhile
      local.keep(read, snap, 50_000);
      clock = 1_000 + lifetime - 1;
      expect(local.get('n'), `lifetime ${lifetime}`).not.toBeNull();
      clock = 1_000 + lifetime;
      expect(local.get('n'), `lifetime ${lifetime}`).toBeNull();
    }
  });

  it('asks for one renewal per kept copy, in the last fifth of its lifetime', () => {
    const local = new LocalSnapshots(1_000, now);
    local.resumed();
    expect(local.refreshDue('n')).toBe(false);
    local.keep(local.begin('n')!, snapshot(), 0);
    clock = 1_799;
    expect(local.refreshDue('n')).toBe(false);
    clock = 1_800;
    expect(local.refreshDue('n')).toBe(true);
    expect(local.refreshDue('n')).toBe(false);
    // The renewal's answer is a new copy, with its own lifetime from its read.
    const renewal = local.begin('n')!;
    local.keep(renewal, snapshot(), 0);
    clock = 2_599;
    expect(local.refreshDue('n')).toBe(false);
    expect(local.get('n')).not.toBeNull();
    clock = 2_600;
    expect(local.refreshDue('n')).toBe(true);
    // A copy an expiry ends is not renewed: at the deadline the read must ask Redis anyway.
    for (const cut of [snapshot({ reservations: [500] }), snapshot({ expiresAt: 500 })]) {
      clock = 3_000;
      local.keep(local.begin('n')!, cut, 0);
      clock = 3_450;
      expect(local.refreshDue('n')).toBe(false);
      expect(local.get('n')).not.toBeNull();
    }
  });

  it('forgets nodes nobody reads again once they are past the bound', () => {
    const local = new LocalSnapshots(1_000, now);
    local.resumed();
    local.keep(local.begin('once')!, snapshot(), 0);
    clock = 1_500;
    local.keep(local.begin('often')!, snapshot(), 0);
    clock = 2_000;
    local.keep(local.begin('often')!, snapshot(), 0);
    expect(local.size()).toBe(1);
    expect(local.get('often')).not.toBeNull();
  });

  it('keeps neither a set that is not cached nor one that has expired', () => {
    const local = new LocalSnapshots(1_000, now);
    local.resumed();
    local.keep(local.begin('n')!, { version: 1, cache: null, reserved: [], firstExpiry: null }, 0);
    expect(local.get('n')).toBeNull();
    local.keep(local.begin('n')!, snapshot({ expiresAt: 10 }), 10);
    expect(local.get('n')).toBeNull();
  });

  it('hands out a frozen snapshot: one caller cannot change what the next one reads', () => {
    const local = new LocalSnapshots(1_000, now);
    local.resumed();
    local.keep(local.begin('n')!, snapshot({ reservations: [5_000] }), 0);
    const kept = local.get('n')!;
    expect(() => kept.cache!.taken.push(999)).toThrow(TypeError);
    expect(() => (kept.reserved as unknown[]).pop()).toThrow(TypeError);
    expect(local.get('n')!.cache!.taken).toEqual([100, 101]);
  });
});
