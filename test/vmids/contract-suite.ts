import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  MemoryVmidStore,
  type NodeRef,
  RedisVmidStore,
  type ReserveRequest,
  VMID_MAX,
  VmidService,
} from '../../src/vmids/index.js';
import { isCluster } from '../../src/redis/redis.js';
import { lowestFree } from '../../src/vmids/store.js';
import { expectCode } from '../proxmox/helpers.js';
import { uniqueRedisPrefix } from '../support/test-server.js';
import {
  brief,
  eventually,
  expectConsecutive,
  makeService,
  newNode,
  type OpenStore,
  openStore,
  type Proxmox,
  publishRaw,
  sameCluster,
  startProxmox,
  type StoreKind,
  take,
  reserveOne,
} from './helpers.js';
import { TEST_REDIS_URL } from '../support/env.js';

// 10 guests, a gap after every 4th: taken 100-103, 105-108, 110-111; lowest free 104.
const TAKEN = [100, 101, 102, 103, 105, 106, 107, 108, 110, 111];

/**
 * The VMID store's contract, for one kind of store: run by contract.test.ts on the memory
 * stores and one Redis server, by contract-topologies.test.ts on a Sentinel group and a Redis
 * Cluster. `url`: REDIS_URL of the Redis stores (default: the single test Redis).
 */
export function vmidStoreContract(kind: StoreKind, url = TEST_REDIS_URL, where = 'one Redis server'): void {
  describe(`VMID cache and reservations (${kind} store${kind.startsWith('redis') ? `, ${where}` : ''})`, () => {
    let proxmox: Proxmox;
    let opened: OpenStore;
    let service: VmidService;
    let node: NodeRef;

    beforeAll(async () => {
      proxmox = await startProxmox({ guests: 10, vmidGapEvery: 4 });
    });
    afterAll(async () => {
      await proxmox.close();
    });
    beforeEach(async () => {
      opened = await openStore(kind, uniqueRedisPrefix(), url);
      service = makeService(opened.store, proxmox);
      node = newNode();
      proxmox.sim.stats.reset();
      proxmox.sim.clearFaults();
    });
    afterEach(async () => {
      await opened.close();
      for (const g of proxmox.sim.guests()) if (!TAKEN.includes(g.vmid)) proxmox.sim.removeGuest(g.vmid);
    });

    it('reads through on a miss, then serves from the cache', async () => {
      const first = await service.getCachedVmids(node);
      expect(first).toMatchObject({ nodeId: node.id, taken: TAKEN, reserved: [], fromCache: false, version: 1 });
      expect(first.expiresAt.getTime() - first.refreshedAt.getTime()).toBe(60_000);
      expect(Math.abs(first.refreshedAt.getTime() - Date.now())).toBeLessThan(2_000);
      const second = await service.getCachedVmids(node);
      expect(second).toEqual({ ...first, fromCache: true });
      expect(proxmox.resourceCalls()).toBe(1);
    });

    it('asks Proxmox again once the TTL is over; an unchanged set keeps its version', async () => {
      const short = makeService(opened.store, proxmox, { cacheTtlSeconds: 1 });
      const first = await short.getCachedVmids(node);
      expect((await short.getCachedVmids(node)).fromCache).toBe(true);
      await sleep(1_100);
      const again = await short.getCachedVmids(node);
      expect(again.fromCache).toBe(false);
      expect(again.version).toBe(first.version);
      expect(proxmox.resourceCalls()).toBe(2);
    });

    it('refresh always asks Proxmox and replaces the set; the version grows only on a change', async () => {
      const before = await service.getCachedVmids(node);
      proxmox.sim.addGuest({ vmid: 500 });
      proxmox.sim.removeGuest(100);
      try {
        const after = await service.refreshVmidCache(node);
        expect(after.taken).toEqual([...TAKEN.filter((v) => v !== 100), 500]);
        expect(after.fromCache).toBe(false);
        expect(after.version).toBe(before.version + 1);
        const same = await service.refreshVmidCache(node);
        expect(same.version).toBe(after.version);
        expect(proxmox.resourceCalls()).toBe(3);
        expect(await service.getCachedVmids(node)).toMatchObject({ taken: after.taken, fromCache: true });
      } finally {
        proxmox.sim.addGuest({ vmid: 100 });
      }
    });

    it('refreshSet writes what refresh would and answers the set and version without the reservations; isCached follows what a read sees', async () => {
      const store = opened.store;
      expect(await store.isCached(node)).toBe(false);
      await service.getCachedVmids(node);
      expect(await store.isCached(node)).toBe(true);
      await service.reserveVmid(node, 7000, 600, 100);
      await store.invalidate(node);
      expect(await store.isCached(node)).toBe(false);
      const outcome = await store.refreshSet(node, [...TAKEN, 500], 60, null);
      if (!outcome.written) throw new Error('not written');
      expect(outcome).toEqual({
        written: true,
        changed: true,
        version: expect.any(Number),
        cache: { taken: [...TAKEN, 500], refreshedAt: expect.any(Date), expiresAt: expect.any(Date) },
      });
      expect(Object.keys(outcome)).not.toContain('reserved');
      expect(await store.isCached(node)).toBe(true);
      const read = await store.read(node);
      expect(read).toMatchObject({ version: outcome.version, reserved: [7000], cache: outcome.cache });
      // A stale write (the cache invalidated since its epoch was read) is refused, as refresh's.
      const { epoch } = await store.state(node.id);
      await store.invalidate(node);
      expect(await store.refreshSet(node, TAKEN, 60, epoch)).toEqual({ written: false, version: expect.any(Number) });
      expect(await store.isCached(node)).toBe(false);
    });

    it('a refresh answers what a read then sees: the set ascending and once each, the live reservations', async () => {
      await service.getCachedVmids(node);
      await service.reserveVmid(node, 7000, 600, 100);
      const answered = await service.refreshVmidCache(node);
      expect(answered.reserved).toEqual([7000]);
      expect(await service.getCachedVmids(node)).toEqual({ ...answered, fromCache: true });
      // The store itself, given a list out of order with a repeat: cached canonical, so the same
      // set in order is "unchanged".
      const written = await opened.store.refresh(node, [TAKEN[2]!, TAKEN[0]!, TAKEN[2]!, TAKEN[1]!], 60, null);
      expect(written).toMatchObject({ written: true, changed: true });
      const snapshot = written.written ? written.snapshot : null;
      expect(snapshot?.cache.taken).toEqual(TAKEN.slice(0, 3));
      expect(snapshot?.reserved).toEqual([7000]);
      expect(await opened.store.read(node)).toEqual(snapshot);
      expect(await opened.store.refresh(node, TAKEN.slice(0, 3), 60, null)).toMatchObject({
        written: true,
        changed: false,
      });
      if (opened.redis) {
        // A set cached by an earlier version has no kept list: read from its members instead.
        expect(await opened.redis.hdel(`vmid-meta:{${node.id}}`, 'list')).toBe(1);
        expect((await opened.store.read(node)).cache?.taken).toEqual(TAKEN.slice(0, 3));
      }
    });

    it('an empty set is cached as empty, and a kept list that no longer matches the set is not trusted (rolling upgrade)', async () => {
      const empty = await opened.store.refresh(node, [], 60, null);
      expect(empty.written && empty.snapshot.cache.taken).toEqual([]);
      expect(await opened.store.read(node)).toEqual(empty.written && empty.snapshot);
      await opened.store.refresh(node, [100, 101], 60, null);
      if (opened.redis) {
        // What an instance of the earlier version does: its consume adds to the set, its
        // refresh rewrites refreshedAt; neither keeps the list.
        await opened.redis.sadd(`vmid-cache:{${node.id}}`, '104');
        expect((await opened.store.read(node)).cache?.taken).toEqual([100, 101, 104]);
        await opened.store.refresh(node, [100, 101], 60, null);
        await opened.redis.hset(`vmid-meta:{${node.id}}`, 'refreshedAt', String(Date.now() + 5));
        await opened.redis.srem(`vmid-cache:{${node.id}}`, '101');
        await opened.redis.sadd(`vmid-cache:{${node.id}}`, '200');
        expect((await opened.store.read(node)).cache?.taken).toEqual([100, 200]);
      }
    });

    it('readers never see a half-replaced set', async () => {
      await service.getCachedVmids(node);
      const a = TAKEN;
      const b = Array.from({ length: 3_000 }, (_, i) => 1_000 + i);
      let next = a;
      const writer = new VmidService({
        store: opened.store,
        cacheTtlSeconds: 60,
        fetchTakenVmids: async () => (next = next === a ? b : a),
        authority: proxmox.authority,
      });
      const seen = new Set<string>();
      let writing = true;
      const readers = Promise.all(
        Array.from({ length: 4 }, async () => {
          while (writing) {
            const s = await service.getCachedVmids(node);
            seen.add(s.taken.length === a.length ? 'a' : s.taken.length === b.length ? 'b' : `other:${s.taken.length}`);
            if (s.taken.length === b.length) expect(s.taken).toEqual(b);
            if (s.taken.length === a.length) expect(s.taken).toEqual(a);
            await sleep(0);
          }
        }),
      );
      for (let i = 0; i < 10; i++) await writer.refreshVmidCache(node);
      writing = false;
      await readers;
      expect([...seen].filter((s) => s.startsWith('other'))).toEqual([]);
    });

    it('every change grows the version by exactly one, with one event each', async () => {
      const events = service.subscribeNode(node);
      try {
        expect(brief(await take(events, 1))).toEqual(['SYNC@0']);
        await service.getCachedVmids(node); // REFRESHED 1 (first fill)
        await service.getCachedVmids(node); // cached: no change
        await service.reserveVmid(node, 104, 60); // RESERVED 2
        expect(await service.releaseVmid(node, 104)).toBe(true); // RELEASED 3
        expect(await service.releaseVmid(node, 104)).toBe(false); // nothing
        expect(await service.invalidateVmidCache(node)).toBe(true); // INVALIDATED 4
        expect(await service.invalidateVmidCache(node)).toBe(false); // INVALIDATED 5 (no cache, still a signal)
        await service.getCachedVmids(node); // REFRESHED 6: first fill after an invalidation is announced
        await service.refreshVmidCache(node); // unchanged: nothing
        await service.reserveVmid(node, 104, 60); // RESERVED 7
        await service.consumeReservation(node, 104); // REFRESHED 8: 104 moves to taken
        const got = await take(events, 8);
        expect(brief(got)).toEqual([
          'REFRESHED@1',
          'RESERVED@2',
          'RELEASED@3',
          'INVALIDATED@4',
          'INVALIDATED@5',
          'REFRESHED@6',
          'RESERVED@7',
          'REFRESHED@8',
        ]);
        expectConsecutive(got);
        // REFRESHED carries what changed, not the set: the first fill adds all of it, the fill
        // after the invalidation nothing, the consumed reservation its one VMID.
        expect(got[0]).toMatchObject({ vmids: null, added: TAKEN, removed: [] });
        expect(got[1]).toMatchObject({ vmids: [104], added: [], removed: [] });
        expect(got[3]!.vmids).toBeNull();
        expect(got[5]).toMatchObject({ vmids: null, added: [], removed: [] });
        expect(got[7]).toMatchObject({ vmids: null, added: [104], removed: [] });
        expect(got.every((e) => e.nodeId === node.id && e.at instanceof Date)).toBe(true);
        expect((await service.getCachedVmids(node)).version).toBe(8);
      } finally {
        await events.return?.();
      }
    });

    it('REFRESHED says what changed since the previous version, also across an invalidation; the set itself does not travel', async () => {
      await service.getCachedVmids(node); // REFRESHED 1: everything is new
      const events = service.subscribeNode(node);
      try {
        expect(brief(await take(events, 1))).toEqual(['SYNC@1']);
        proxmox.sim.addGuest({ vmid: 500 });
        proxmox.sim.removeGuest(100);
        await service.refreshVmidCache(node); // REFRESHED 2
        await service.invalidateVmidCache(node); // INVALIDATED 3
        proxmox.sim.removeGuest(500);
        await service.getCachedVmids(node); // REFRESHED 4, against the set as last written
        const got = await take(events, 3);
        expect(brief(got)).toEqual(['REFRESHED@2', 'INVALIDATED@3', 'REFRESHED@4']);
        expect(got[0]).toMatchObject({ vmids: null, added: [500], removed: [100] });
        expect(got[1]).toMatchObject({ added: [], removed: [] });
        expect(got[2]).toMatchObject({ vmids: null, added: [], removed: [500] });
      } finally {
        await events.return?.();
        proxmox.sim.addGuest({ vmid: 100 });
      }
    });

    it('resumes after a version: the missed events in order, no SYNC, then live; SYNC when they cannot all be replayed', async () => {
      await service.getCachedVmids(node); // REFRESHED 1
      await service.reserveVmid(node, 104, 60); // RESERVED 2
      await service.releaseVmid(node, 104); // RELEASED 3
      await service.invalidateVmidCache(node); // INVALIDATED 4
      const resumed = service.subscribeNode(node, 1);
      const upToDate = service.subscribeNode(node, 4);
      const ahead = service.subscribeNode(node, 9);
      try {
        const replay = await take(resumed, 3);
        expect(brief(replay)).toEqual(['RESERVED@2', 'RELEASED@3', 'INVALIDATED@4']);
        expect(replay[0]).toMatchObject({ nodeId: node.id, vmids: [104] });
        expect(brief(await take(ahead, 1))).toEqual(['SYNC@4']);
        await service.reserveVmid(node, 4000, 60); // the cache was invalidated: REFRESHED 5, then RESERVED 6
        const live = await take(resumed, 2);
        expect(brief(live)).toEqual(['REFRESHED@5', 'RESERVED@6']);
        // Nothing was missed: no SYNC, straight to what happens next.
        expect(brief(await take(upToDate, 2))).toEqual(['REFRESHED@5', 'RESERVED@6']);
      } finally {
        await Promise.all([resumed.return?.(), upToDate.return?.(), ahead.return?.()]);
      }
    });

    it('a resumed subscription to a deleted node replays up to DELETED and completes', async () => {
      await service.getCachedVmids(node); // REFRESHED 1
      await service.nodeDeleted(node); // DELETED 2
      const resumed = service.subscribeNode(node, 1);
      expect(brief(await take(resumed, 1))).toEqual(['DELETED@2']);
      expect((await resumed.next()).done).toBe(true);
    });

    it('reserves a free VMID, refuses a taken or reserved one (CONFLICT), releases', async () => {
      const r = await service.reserveVmid(node, 104, 120);
      expect(r.nodeId).toBe(node.id);
      expect(r.vmid).toBe(104);
      expect(Math.abs(r.expiresAt.getTime() - (Date.now() + 120_000))).toBeLessThan(2_000);
      const dup = await expectCode(service.reserveVmid(node, 104, 120), 'CONFLICT');
      expect(dup.extensions['vmid']).toBe(104);
      await expectCode(service.reserveVmid(node, 100, 120), 'CONFLICT');
      expect((await service.getCachedVmids(node)).reserved).toEqual([104]);
      expect(await service.releaseVmid(node, 104)).toBe(true);
      expect(await service.releaseVmid(node, 104)).toBe(false);
      expect((await service.reserveVmid(node, 104, 120)).vmid).toBe(104);
      // Another node's VMIDs are its own.
      expect((await service.reserveVmid(newNode(node.userId), 104, 120)).vmid).toBe(104);
    });

    it('a reservation on an uncached node checks the guests Proxmox knows first', async () => {
      await expectCode(service.reserveVmid(node, 105, 60), 'CONFLICT');
      expect(proxmox.resourceCalls()).toBe(1);
      const other = newNode();
      expect((await service.reserveVmid(other, undefined, 60)).vmid).toBe(104);
    });

    it('without a vmid reserves the lowest free VMID ≥ min', async () => {
      expect((await service.reserveVmid(node, undefined, 60)).vmid).toBe(104);
      expect((await service.reserveVmid(node, null, 60)).vmid).toBe(109);
      expect((await service.reserveVmid(node, undefined, 60)).vmid).toBe(112);
      expect((await service.reserveVmid(node, undefined, 60, 105)).vmid).toBe(113);
      expect((await service.reserveVmid(node, undefined, 60, 5_000)).vmid).toBe(5_000);
      expect((await service.getCachedVmids(node)).reserved).toEqual([104, 109, 112, 113, 5_000]);
    });

    it('reserved VMIDs count as taken for isVmidTaken and nextFreeVmid', async () => {
      expect(await service.isVmidTaken(node, 100)).toBe(true);
      expect(await service.isVmidTaken(node, 104)).toBe(false);
      expect(await service.nextFreeVmid(node)).toBe(104);
      await service.reserveVmid(node, 104, 60);
      expect(await service.isVmidTaken(node, 104)).toBe(true);
      expect(await service.nextFreeVmid(node)).toBe(109);
      expect(await service.nextFreeVmid(node, 110)).toBe(112);
      expect(await service.nextFreeVmid(node, 7_777)).toBe(7_777);
      expect(proxmox.resourceCalls()).toBe(1);
    });

    it('reservations expire by themselves', async () => {
      await service.reserveVmid(node, 104, 1);
      expect(await service.isVmidTaken(node, 104)).toBe(true);
      await sleep(1_100);
      expect(await service.isVmidTaken(node, 104)).toBe(false);
      expect((await service.getCachedVmids(node)).reserved).toEqual([]);
      expect(await service.releaseVmid(node, 104)).toBe(false);
      expect((await service.reserveVmid(node, undefined, 60)).vmid).toBe(104);
    });

    it('a reservation that lapses is announced to subscribers by itself: RELEASED, one version more', async () => {
      await service.getCachedVmids(node); // REFRESHED 1
      const events = service.subscribeNode(node);
      try {
        expect(brief(await take(events, 1))).toEqual(['SYNC@1']);
        const held = await service.reserveVmid(node, 104, 1); // RESERVED 2
        await service.reserveVmid(node, 109, 600); // RESERVED 3: outlives the test
        // Nothing else is called: the lapse must come from the node's timer.
        const got = await take(events, 3, 4_000);
        expect(brief(got)).toEqual(['RESERVED@2', 'RESERVED@3', 'RELEASED@4']);
        expect(got[0]).toMatchObject({ vmids: [104], expiresAt: held.expiresAt });
        expect(got[2]!.vmids).toEqual([104]);
        expect(got[2]!.at.getTime()).toBeGreaterThanOrEqual(held.expiresAt.getTime());
        expect(Date.now() - held.expiresAt.getTime()).toBeLessThan(1_000);
        expect(await service.getCachedVmids(node)).toMatchObject({ version: 4, reserved: [109] });
      } finally {
        await events.return?.();
      }
      expect(service.nodesWatchedForLapses()).toBe(0);
    });

    it('lapses nobody watched are announced by the next read, together, before it answers', async () => {
      await service.getCachedVmids(node); // REFRESHED 1
      const heard: string[] = [];
      // The store's own channel, no subscription: nothing sweeps this node.
      const unlisten = await opened.store.listen(node.spaceId, (e) =>
        heard.push(`${e.kind}@${e.version}:${e.vmids?.join(',')}`),
      );
      try {
        // 999 before 1000 only in numeric order.
        await service.reserveVmid(node, 1000, 1); // RESERVED 2
        await service.reserveVmid(node, 999, 1); // RESERVED 3
        await sleep(1_150);
        expect(heard).toEqual(['RESERVED@2:1000', 'RESERVED@3:999']);
        expect(await service.getCachedVmids(node)).toMatchObject({ version: 4, reserved: [] });
        await eventually(() => heard.length === 3, 2_000, 'the lapse event');
        expect(heard[2]).toBe('RELEASED@4:999,1000');
        // Ended once: the next look finds nothing more to announce.
        expect(await service.isVmidTaken(node, 999)).toBe(false);
        expect((await service.getCachedVmids(node)).version).toBe(4);
      } finally {
        unlisten();
      }
    });

    it('consuming a reservation moves the VMID to the taken set', async () => {
      await service.reserveVmid(node, 104, 60);
      expect(await service.consumeReservation(node, 104)).toEqual({ released: true, added: true });
      const s = await service.getCachedVmids(node);
      expect(s.reserved).toEqual([]);
      expect(s.taken).toContain(104);
      await expectCode(service.reserveVmid(node, 104, 60), 'CONFLICT');
      // Without a cached set only the reservation ends.
      const other = newNode();
      expect(await service.consumeReservation(other, 104)).toEqual({ released: false, added: false });
    });

    it('a guest created in Proxmox shows up after an invalidation and after a refresh', async () => {
      expect((await service.getCachedVmids(node)).taken).not.toContain(104);
      proxmox.sim.addGuest({ vmid: 104, type: 'lxc' });
      expect((await service.getCachedVmids(node)).taken).not.toContain(104); // still cached
      expect(await service.invalidateVmidCache(node)).toBe(true);
      const s = await service.getCachedVmids(node);
      expect(s.fromCache).toBe(false);
      expect(s.taken).toContain(104);
      expect(await service.nextFreeVmid(node)).toBe(109);

      // Created through the API, as a client of Proxmox would.
      const res = await fetch(`${proxmox.sim.apiUrl}/nodes/pve/lxc`, {
        method: 'POST',
        headers: {
          authorization: `PVEAPIToken=${proxmox.sim.token.id}=${proxmox.sim.token.secret}`,
          'content-type': 'application/x-www-form-urlencoded',
        },
        body: 'vmid=109',
        // The simulator's certificate is self-signed.
        dispatcher: new (await import('undici')).Agent({ connect: { rejectUnauthorized: false } }),
      } as RequestInit);
      expect(res.status).toBe(200);
      expect((await service.getCachedVmids(node)).taken).not.toContain(109);
      expect((await service.refreshVmidCache(node)).taken).toContain(109);
      expect(await service.isVmidTaken(node, 109)).toBe(true);
    });

    it('passes Proxmox errors through unchanged', async () => {
      const failing = new VmidService({
        store: opened.store,
        cacheTtlSeconds: 60,
        fetchTakenVmids: async () =>
          (await proxmox.client.guests(proxmox.sim.target({ tokenSecret: 'wrong' }))).map((g) => g.vmid),
        authority: proxmox.authority,
      });
      await expectCode(failing.getCachedVmids(node), 'PROXMOX_AUTH_FAILED');
      await expectCode(failing.reserveVmid(node, undefined, 60), 'PROXMOX_AUTH_FAILED');
      await expectCode(failing.refreshVmidCache(node), 'PROXMOX_AUTH_FAILED');
    });

    it('validates its inputs (BAD_USER_INPUT naming the field)', async () => {
      const cases: Array<[Promise<unknown>, string]> = [
        [service.reserveVmid(node, 99, 60), 'vmid'],
        [service.reserveVmid(node, 1_000_000_000, 60), 'vmid'],
        [service.reserveVmid(node, 150.5, 60), 'vmid'],
        [service.reserveVmid(node, 150, 0), 'ttlSeconds'],
        [service.reserveVmid(node, 150, 86_401), 'ttlSeconds'],
        [service.reserveVmid(node, undefined, 60, 10), 'min'],
        [service.releaseVmid(node, 0), 'vmid'],
        [service.isVmidTaken(node, 99), 'vmid'],
        [service.nextFreeVmid(node, 99), 'min'],
        [service.nextFreeVmid(node, 1_000_000_000), 'min'],
        [service.consumeReservation(node, -1), 'vmid'],
      ];
      for (const [p, field] of cases) {
        const err = await expectCode(p, 'BAD_USER_INPUT');
        expect(Object.keys(err.extensions['fields'] as object)).toEqual([field]);
      }
      expect(proxmox.resourceCalls()).toBe(0);
    });

    it("a deleted node's last event is DELETED: its own subscription completes, the user's goes on, nothing of it is kept", async () => {
      const sibling = newNode(node.userId);
      const own = service.subscribeNode(node);
      const all = service.subscribeUser(node.userId, [node, sibling]);
      try {
        expect(brief(await take(own, 1))).toEqual(['SYNC@0']);
        expect(brief(await take(all, 2))).toEqual(['SYNC@0', 'SYNC@0']);
        await service.getCachedVmids(node); // REFRESHED 1
        await service.reserveVmid(node, 104, 60); // RESERVED 2
        await service.nodeDeleted(node); // DELETED 3
        const last = await take(own, 3);
        expect(brief(last)).toEqual(['REFRESHED@1', 'RESERVED@2', 'DELETED@3']);
        expect(last[2]).toMatchObject({ nodeId: node.id, vmids: null });
        expect((await own.next()).done).toBe(true);

        if (opened.fast instanceof RedisVmidStore) {
          // An instance of an earlier version (rolling upgrade) may still write the deleted node
          // and publish: nothing of the node is passed on after its DELETED.
          const late = { nodeId: node.id, kind: 'REFRESHED', version: 9, at: Date.now(), vmids: [100] };
          await publishRaw(opened.redis!, opened.fast.channel(node.spaceId), JSON.stringify(late));
        }
        await service.getCachedVmids(sibling); // the sibling's REFRESHED 1: the user's subscription goes on
        const got = await take(all, 4);
        expect(got.map((e) => `${e.nodeId === node.id ? 'node' : 'sibling'} ${e.kind}@${e.version}`)).toEqual([
          'node REFRESHED@1',
          'node RESERVED@2',
          'node DELETED@3',
          'sibling REFRESHED@1',
        ]);
        // The deleted node's reservation no longer has a lapse to watch for.
        expect(service.nodesWatchedForLapses()).toBe(1);
        expect(await opened.store.state(node.id)).toMatchObject({ version: 3, deleted: true });
        expect(await opened.store.read(node)).toEqual({ version: 3, cache: null, reserved: [], firstExpiry: null });
      } finally {
        await own.return?.();
        await all.return?.();
      }
      expect(service.nodesWatchedForLapses()).toBe(0);
    });

    it('what was on its way when the node was deleted re-creates nothing and announces nothing after DELETED', async () => {
      await service.getCachedVmids(node); // REFRESHED 1
      const { epoch } = await opened.store.state(node.id);
      await service.nodeDeleted(node); // DELETED 2
      await service.nodeDeleted(node); // twice: nothing more
      const events: string[] = [];
      const stop = await opened.store.listen(node.spaceId, (e) => events.push(`${e.kind}@${e.version}`));
      try {
        // A fill that read the epoch before the deletion, and one that did not care.
        await expectCode(opened.store.refresh(node, [100], 60, epoch), 'NOT_FOUND');
        await expectCode(opened.store.refresh(node, [100], 60, null), 'NOT_FOUND');
        // An invalidation, or a read that fills, through an instance that still knew the node:
        // Proxmox is not even asked.
        const calls = proxmox.resourceCalls();
        await expectCode(service.invalidateVmidCache(node), 'NOT_FOUND');
        await expectCode(service.getCachedVmids(node), 'NOT_FOUND');
        await expectCode(service.refreshVmidCache(node), 'NOT_FOUND');
        await expectCode(service.reserveVmid(node, undefined, 60), 'NOT_FOUND');
        expect(proxmox.resourceCalls()).toBe(calls);
        expect(await opened.store.read(node)).toEqual({ version: 2, cache: null, reserved: [], firstExpiry: null });
        await sleep(50); // an event published would have arrived
        expect(events).toEqual([]);
      } finally {
        stop();
      }
    });

    it('a subscriber that missed DELETED, or subscribes after it, is told DELETED from the tombstone', async () => {
      const sibling = newNode(node.userId);
      await service.getCachedVmids(node); // REFRESHED 1
      await service.nodeDeleted(node); // DELETED 2
      const own = service.subscribeNode(node);
      const all = service.subscribeUser(node.userId, [node, sibling]);
      try {
        expect(brief(await take(own, 1))).toEqual(['DELETED@2']);
        expect((await own.next()).done).toBe(true);
        const first = await take(all, 2);
        expect(first.map((e) => `${e.nodeId === node.id ? 'node' : 'sibling'} ${e.kind}@${e.version}`)).toEqual([
          'node DELETED@2',
          'sibling SYNC@0',
        ]);
        expect(service.nodesWatchedForLapses()).toBe(1);
      } finally {
        await own.return?.();
        await all.return?.();
      }
    });

    /** A reservation request of `owner` (the node's user by default), any VMID up to VMID_MAX. */
    const req = (vmid: number | null, more: Partial<ReserveRequest> = {}): ReserveRequest => ({
      vmid,
      min: 100,
      max: VMID_MAX,
      owner: node.userId,
      ttlSeconds: 600,
      ...more,
    });
    const nextFree = async (min = 100, max = VMID_MAX) => {
      const outcome = await opened.store.nextFree(node, min, max);
      return outcome.status === 'free' ? outcome.vmid : outcome.status;
    };
    const reserveNext = async (more: Partial<ReserveRequest> = {}) => {
      const outcome = await reserveOne(opened.store, node, req(null, more));
      return outcome.status === 'reserved' ? outcome.vmid : outcome.status;
    };

    it('the lowest free VMID skips taken and reserved ones; one both taken and reserved stays used until both end', async () => {
      const store = opened.store;
      expect(await nextFree()).toBe('miss');
      expect(await reserveNext()).toBe('miss');
      await store.refresh(node, [100, 101, 103], 60, null);
      expect(await nextFree()).toBe(102);
      expect(await reserveNext()).toBe(102);
      expect(await nextFree()).toBe(104);
      // Reserved, then listed by Proxmox before it was consumed: taken and reserved at once.
      expect(await reserveOne(store, node, req(104))).toMatchObject({ status: 'reserved', vmid: 104 });
      await store.refresh(node, [100, 101, 103, 104], 60, null);
      expect(await store.release(node, 104, node.userId)).toBe(true);
      expect(await nextFree()).toBe(105); // still taken
      await store.refresh(node, [100, 101, 103], 60, null);
      expect(await nextFree()).toBe(104); // the guest went again
      // A refresh that no longer lists a VMID keeps it used while it is reserved.
      await store.refresh(node, [100, 101], 60, null);
      expect(await nextFree()).toBe(103); // 102 stays reserved
      expect(await reserveNext()).toBe(103);
      // Consumed: now taken, still used.
      expect(await store.consume(node, 103)).toEqual({ released: true, added: true });
      expect(await nextFree()).toBe(104);
      // Invalidated: the reservations stay, the taken part goes with the cache.
      await store.invalidate(node);
      expect(await nextFree()).toBe('miss');
      expect(await reserveNext()).toBe('miss');
      await store.refresh(node, [100], 60, null);
      expect(await nextFree()).toBe(101);
      expect(await reserveNext()).toBe(101);
      expect(await nextFree()).toBe(103);
      expect(await nextFree(5_000)).toBe(5_000);
      expect((await store.read(node)).reserved).toEqual([101, 102]);
    });

    it('a fill after the cache expired or was invalidated answers as a whole new set would, also when Redis lost part of the kept set', async () => {
      const store = opened.store;
      const cacheKey = `vmid-cache:{${node.id}}`;
      await store.refresh(node, [100, 101, 102, 103], 1, null);
      expect(await reserveNext()).toBe(104);
      await sleep(1_100);
      expect(await nextFree()).toBe('miss');
      // The set outlives its cache for the next fill to move it by what changed.
      if (opened.redis) expect(await opened.redis.scard(cacheKey)).toBe(4);
      expect(await store.refresh(node, [100, 102, 103, 105], 1, null)).toMatchObject({ written: true, changed: true });
      expect((await store.read(node)).cache!.taken).toEqual([100, 102, 103, 105]);
      expect((await reserveOne(store, node, req(105))).status).toBe('taken');
      expect(await reserveNext()).toBe(101);
      expect(await reserveNext()).toBe(106);
      // Expired again, and the kept set lost a VMID meanwhile (an eviction): written whole.
      await sleep(1_100);
      if (opened.redis) await opened.redis.srem(cacheKey, '103');
      await store.refresh(node, [100, 102, 103, 105, 107], 60, null);
      expect((await store.read(node)).cache!.taken).toEqual([100, 102, 103, 105, 107]);
      expect((await reserveOne(store, node, req(103))).status).toBe('taken');
      expect(await reserveNext()).toBe(108);
      // The same set again after an invalidation: announced again, nothing else changes.
      const before = await store.read(node);
      await store.invalidate(node);
      const again = await store.refresh(node, [100, 102, 103, 105, 107], 60, null);
      expect(again).toMatchObject({ written: true, changed: true });
      expect((await store.read(node)).cache!.taken).toEqual(before.cache!.taken);
      expect(await reserveNext()).toBe(109);
      // Invalidated, and the kept set lost a VMID meanwhile: written whole.
      await store.invalidate(node);
      if (opened.redis) await opened.redis.srem(cacheKey, '107');
      await store.refresh(node, [100, 102, 103, 105, 107, 110], 60, null);
      expect((await store.read(node)).cache!.taken).toEqual([100, 102, 103, 105, 107, 110]);
      expect((await reserveOne(store, node, req(107))).status).toBe('taken');
    });

    it('the used index is built whole again at least every 12 hours: a VMID it kept by mistake is handed out then', async () => {
      const store = opened.store;
      await store.refresh(node, [100, 101, 103], 60, null);
      // Redis's index keeps a free VMID (an evicted held set, an earlier version's script), and
      // was last built whole 13 hours ago: the next fill, changed or not, builds it whole.
      const stray = async (vmid: number) => {
        if (!opened.redis) return;
        await opened.redis.zadd(`vmid-used:{${node.id}}`, vmid, String(vmid));
        await opened.redis.hset(`vmid-version:{${node.id}}`, 'usedBuilt', String(Date.now() - 13 * 3_600_000));
      };
      await stray(102);
      await store.refresh(node, [100, 101, 103, 104], 60, null);
      expect(await reserveNext()).toBe(102);
      await stray(105);
      await store.refresh(node, [100, 101, 103, 104], 60, null);
      expect(await reserveNext()).toBe(105);
    });

    it('lapsed reservations free their VMIDs unless a guest has them too', async () => {
      const store = opened.store;
      await store.refresh(node, [100], 60, null);
      await reserveOne(store, node, req(200, { ttlSeconds: 1 }));
      await reserveOne(store, node, req(201, { ttlSeconds: 1 }));
      await store.refresh(node, [100, 201], 60, null);
      expect(await nextFree(200)).toBe(202);
      await sleep(1_100);
      expect(await nextFree(200)).toBe(200);
      expect(await reserveNext({ min: 200 })).toBe(200);
      expect(await reserveNext({ min: 200 })).toBe(202);
      expect((await store.read(node)).reserved).toEqual([200, 202]);
    });

    it('nextFree reserves nothing and announces nothing', async () => {
      const store = opened.store;
      await store.refresh(node, TAKEN, 60, null);
      const heard: string[] = [];
      const unlisten = await store.listen(node.spaceId, (e) => heard.push(`${e.kind}@${e.version}`));
      try {
        const before = await store.read(node);
        expect(await nextFree()).toBe(104);
        expect(await nextFree()).toBe(104);
        expect(await nextFree(105)).toBe(109);
        expect(await nextFree(100, 103)).toBe('exhausted');
        expect(await store.read(node)).toEqual(before);
        await sleep(50); // an event published would have arrived
        expect(heard).toEqual([]);
      } finally {
        unlisten();
      }
    });

    it('max bounds the search without a vmid, not an explicit vmid', async () => {
      const store = opened.store;
      await store.refresh(node, [100, 101, 102, 103, 104], 60, null);
      expect(await reserveNext({ max: 104 })).toBe('exhausted');
      expect(await nextFree(100, 104)).toBe('exhausted');
      expect(await reserveNext({ max: 105 })).toBe(105);
      expect(await reserveNext({ max: 105 })).toBe('exhausted');
      expect(await reserveNext({ min: 200, max: 199 })).toBe('exhausted');
      // Proxmox's next-id range is not a hard limit.
      expect(await reserveOne(store, node, req(107, { max: 105 }))).toMatchObject({ status: 'reserved', vmid: 107 });
      expect(await reserveNext({ max: 107 })).toBe(106);
      expect(await nextFree(100, 107)).toBe('exhausted');
      expect(await nextFree(100, 108)).toBe(108);
      expect(await reserveNext({ min: VMID_MAX - 1 })).toBe(VMID_MAX - 1);
      expect(await reserveNext({ min: VMID_MAX - 1 })).toBe(VMID_MAX);
      expect(await reserveNext({ min: VMID_MAX - 1 })).toBe('exhausted');
      expect((await store.read(node)).reserved).toEqual([105, 106, 107, VMID_MAX - 1, VMID_MAX]);
    });

    it("only a reservation's owner releases it; anyone else is answered as if there were none; consume is anyone's", async () => {
      const store = opened.store;
      const [alice, bob] = ['alice', 'bob'];
      await store.refresh(node, TAKEN, 60, null);
      expect(await reserveOne(store, node, req(null, { owner: alice }))).toMatchObject({
        status: 'reserved',
        vmid: 104,
      });
      const before = await store.read(node);
      expect(await store.release(node, 104, bob)).toBe(false);
      expect(await store.release(node, 4_000, bob)).toBe(false); // reserved by nobody: the same answer
      expect(await store.read(node)).toEqual(before); // nothing ended, no version
      expect(before.reserved).toEqual([104]); // shown whoever holds it
      expect(await reserveOne(store, node, req(104, { owner: bob }))).toEqual({
        status: 'already-reserved',
        vmid: 104,
      });
      expect(await reserveOne(store, node, req(null, { owner: bob }))).toMatchObject({ status: 'reserved', vmid: 109 });
      expect(await store.release(node, 109, alice)).toBe(false);
      expect(await store.release(node, 104, alice)).toBe(true);
      expect(await store.release(node, 104, alice)).toBe(false);
      // Whoever reserves a VMID next owns it: nothing of the earlier owner is left.
      expect(await reserveOne(store, node, req(104, { owner: bob }))).toMatchObject({ status: 'reserved' });
      expect(await store.release(node, 104, alice)).toBe(false);
      // A guest created for a VMID ends its reservation whoever held it.
      expect(await store.consume(node, 109)).toEqual({ released: true, added: true });
      expect(await store.release(node, 104, bob)).toBe(true);
      expect((await store.read(node)).reserved).toEqual([]);
      if (opened.redis) expect(await opened.redis.exists(`vmid-owners:{${node.id}}`)).toBe(0);
    });

    it('a fill that read the set before a VMID was consumed into it is not written over it', async () => {
      const store = opened.store;
      await store.refresh(node, [200, 210], 60, null);
      // A fill reads the epoch, then Proxmox and the registered containers; a container is
      // registered meanwhile (its VMID consumed into the set); then the fill writes.
      const { epoch } = await store.state(node.spaceId);
      expect(await store.consume(node, 205)).toEqual({ released: false, added: true });
      expect(await store.refresh(node, [200, 210, 220], 60, epoch)).toMatchObject({ written: false });
      expect((await store.read(node)).cache!.taken).toEqual([200, 205, 210]);
    });

    it('a consumed VMID joins the set in its place, wherever it falls, and a fill of the same set afterwards changes nothing', async () => {
      const store = opened.store;
      await store.refresh(node, [200, 210, 220], 60, null);
      for (const vmid of [215, 100, 300, 201, 219]) {
        expect(await store.consume(node, vmid)).toEqual({ released: false, added: true });
      }
      const after = await store.read(node);
      expect(after.cache!.taken).toEqual([100, 200, 201, 210, 215, 219, 220, 300]);
      const refill = await store.refresh(node, after.cache!.taken, 60, null);
      expect(refill).toMatchObject({ written: true, changed: false, snapshot: { version: after.version } });
      // From an empty set, too.
      await store.refresh(node, [], 60, null);
      expect(await store.consume(node, 150)).toEqual({ released: false, added: true });
      expect((await store.read(node)).cache!.taken).toEqual([150]);
    });

    it('restore puts lost reservations back, keeps one made of their VMID since, skips ended ones, announces nothing', async () => {
      const store = opened.store;
      await store.refresh(node, TAKEN, 60, null);
      // The record's reservations (of alice) that the store lost; bob reserved 104 since.
      const bobs = await reserveOne(store, node, req(null, { owner: 'bob' }));
      expect(bobs).toMatchObject({ status: 'reserved', vmid: 104 });
      const before = await store.read(node);
      const until = new Date(Date.now() + 600_000);
      await store.restore(node, [
        { vmid: 104, owner: 'alice', expiresAt: until },
        { vmid: 109, owner: 'alice', expiresAt: until },
        { vmid: 112, owner: 'alice', expiresAt: new Date(Date.now() - 1_000) },
      ]);
      const after = await store.read(node);
      expect(after.version).toBe(before.version);
      expect(after.reserved).toEqual([104, 109]);
      expect(after.firstExpiry).toEqual((bobs as { expiresAt: Date }).expiresAt);
      expect(await store.holder(node, 104)).toEqual({
        owner: 'bob',
        expiresAt: (bobs as { expiresAt: Date }).expiresAt,
      });
      expect(await store.holder(node, 109)).toEqual({ owner: 'alice', expiresAt: until });
      expect(await reserveOne(store, node, req(null, { owner: 'bob' }))).toMatchObject({ vmid: 112 });
      // Nothing goes into a deleted space.
      await store.forget(node);
      await store.restore(node, [{ vmid: 200, owner: 'alice', expiresAt: until }]);
      await store.revive(node);
      expect(await store.holder(node, 200)).toBeNull();
    });

    it("settleRefused: the record's reservation takes a refused one's place in one step, or the refused one ends; a VMID holding anything else keeps it", async () => {
      const store = opened.store;
      await store.refresh(node, TAKEN, 60, null);
      const made = async (vmid: number, owner: string) => {
        const o = await reserveOne(store, node, req(vmid, { owner }));
        if (o.status !== 'reserved') throw new Error(`${vmid} not reserved: ${o.status}`);
        return { vmid, owner, expiresAt: o.expiresAt };
      };
      const [a, b, c] = [await made(104, 'bob'), await made(109, 'bob'), await made(112, 'carol')];
      const before = await store.read(node);
      const until = new Date(Date.now() + 600_000);
      const alices = (vmid: number) => ({ vmid, owner: 'alice', expiresAt: until });
      await store.settleRefused(node, [
        { refused: a, row: alices(104) }, // replaced, silently
        { refused: b, row: null }, // the record has none: it ends
        { refused: { ...c, owner: 'bob' }, row: alices(112) }, // not the refused one: carol's stays
        { refused: { vmid: 120, owner: 'bob', expiresAt: until }, row: alices(120) }, // nothing there: alice's goes in
      ]);
      const after = await store.read(node);
      expect(after.version).toBe(before.version + 1); // one RELEASED, for 109
      expect(after.reserved).toEqual([104, 112, 120]);
      expect(await store.holder(node, 104)).toEqual({ owner: 'alice', expiresAt: until });
      expect(await store.holder(node, 109)).toBeNull();
      expect(await store.holder(node, 112)).toEqual({ owner: 'carol', expiresAt: c.expiresAt });
      expect(await store.holder(node, 120)).toEqual({ owner: 'alice', expiresAt: until });
      expect(await nextFree()).toBe(109);
    });

    it('reserve and nextFree always agree with the plain walk over the taken and reserved VMIDs (random changes)', async () => {
      const store = opened.store;
      // A small fixed-seed generator: the same sequence every run.
      let seed = 42;
      const rand = (n: number) => {
        seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
        return seed % n;
      };
      const owners = ['alice', 'bob'];
      const subset = () => Array.from({ length: 60 }, (_, i) => 100 + i).filter(() => rand(3) === 0);
      await store.refresh(node, subset(), 60, null);
      for (let step = 0; step < 250; step++) {
        const vmid = 100 + rand(70);
        const min = 100 + rand(40);
        const max = min + rand(50);
        switch (rand(9)) {
          case 0:
            await store.refresh(node, subset(), 60, null);
            break;
          case 1:
            await reserveOne(store, node, req(vmid, { owner: owners[rand(2)]! }));
            break;
          case 2:
          case 3: {
            const snap = await store.read(node);
            const expected = lowestFree(min, snap.cache!.taken, snap.reserved);
            expect(await reserveNext({ min, max, owner: owners[rand(2)]! }), `step ${step}`).toBe(
              expected > max ? 'exhausted' : expected,
            );
            break;
          }
          case 4:
            await store.release(node, vmid, owners[rand(2)]!);
            break;
          case 5:
            await store.consume(node, vmid);
            break;
          case 6:
            await store.invalidate(node);
            await store.refresh(node, subset(), 60, null);
            break;
          case 7: {
            // A batch answers what the same requests one after another would, also when the
            // store decides it in parts (the Redis store: scripts of at most 8).
            const snap = await store.read(node);
            const used = [...snap.cache!.taken, ...snap.reserved];
            const batch = Array.from({ length: 1 + rand(20) }, () =>
              rand(3) === 0 ? req(100 + rand(70)) : req(null, { min: 100 + rand(40), max: 140 + rand(40) }),
            );
            const expected = batch.map((r) => {
              if (r.vmid !== null) {
                if (snap.cache!.taken.includes(r.vmid)) return 'taken';
                if (used.includes(r.vmid)) return 'already-reserved';
                used.push(r.vmid);
                return r.vmid;
              }
              const v = lowestFree(r.min, used);
              if (v > r.max) return 'exhausted';
              used.push(v);
              return v;
            });
            const outcomes = await store.reserveMany(node, batch);
            expect(
              outcomes.map((o) => (o.status === 'reserved' ? o.vmid : o.status)),
              `step ${step}`,
            ).toEqual(expected);
            break;
          }
        }
        const snap = await store.read(node);
        const expected = lowestFree(min, snap.cache!.taken, snap.reserved);
        expect(await nextFree(min, max), `step ${step}`).toBe(expected > max ? 'exhausted' : expected);
      }
    });

    it('a batch is one step decided in order: each request sees those before it; one RESERVED event per expiry, VMIDs ascending', async () => {
      const store = opened.store;
      await store.refresh(node, TAKEN, 60, null); // lowest free 104, then 109, 112…
      const events = service.subscribeNode(node);
      try {
        expect(brief(await take(events, 1))).toEqual(['SYNC@1']);
        const outcomes = await store.reserveMany(node, [
          req(null),
          req(null, { ttlSeconds: 660 }),
          req(104), // the first request's VMID: already reserved by then
          req(103), // a guest
          req(null, { min: 105 }),
          req(4_000),
          req(null, { min: 150, max: 149 }), // an empty range
          req(null),
        ]);
        expect(outcomes.map((o) => (o.status === 'reserved' ? o.vmid : o.status))).toEqual([
          104,
          109,
          'already-reserved',
          'taken',
          112,
          4_000,
          'exhausted',
          113,
        ]);
        const got = await take(events, 2);
        expect(brief(got)).toEqual(['RESERVED@2', 'RESERVED@3']);
        // Equal TTLs share an event (and its version); the longer one has its own.
        expect(got[0]!.vmids).toEqual([104, 112, 113, 4_000]);
        expect(got[1]!.vmids).toEqual([109]);
        expect(got[1]!.expiresAt!.getTime() - got[0]!.expiresAt!.getTime()).toBe(60_000);
        const versions = outcomes.flatMap((o) => (o.status === 'reserved' ? [[o.vmid, o.version]] : []));
        expect(Object.fromEntries(versions)).toEqual({ 104: 2, 109: 3, 112: 2, 113: 2, 4000: 2 });
        expect((await store.read(node)).reserved).toEqual([104, 109, 112, 113, 4_000]);
        // A set that is not cached decides nothing: every answer is a miss.
        await store.invalidate(node);
        expect((await store.reserveMany(node, [req(null), req(5_000)])).map((o) => o.status)).toEqual(['miss', 'miss']);
      } finally {
        await events.return?.();
      }
    });

    it('concurrent reservations of one space get the lowest free VMIDs, each once, each announced', async () => {
      await service.getCachedVmids(node);
      const events = service.subscribeNode(node);
      try {
        await take(events, 1); // SYNC
        const got = await Promise.all(Array.from({ length: 40 }, () => service.reserveVmid(node, null, 60)));
        const vmids = got.map((r) => r.vmid).sort((a, b) => a - b);
        const free = Array.from({ length: 60 }, (_, i) => 100 + i).filter((v) => !TAKEN.includes(v));
        expect(vmids).toEqual(free.slice(0, 40));
        const announced: number[] = [];
        while (announced.length < 40) {
          const [event] = await take(events, 1);
          expect(event!.kind).toBe('RESERVED');
          announced.push(...event!.vmids!);
        }
        expect(announced.sort((a, b) => a - b)).toEqual(vmids);
        expect((await service.getCachedVmids(node)).reserved).toEqual(vmids);
      } finally {
        await events.return?.();
      }
    });

    it('the used index is checked against the set and the reservations (scripts of an earlier version, rolling upgrade)', async () => {
      if (!opened.redis) return;
      const redis = opened.redis;
      const store = opened.store;
      await store.refresh(node, [100, 101], 60, null);
      // An earlier version's reserve and consume: reservation and set written, the index not.
      await redis.zadd(`vmid-reservations:{${node.id}}`, Date.now() + 60_000, '102');
      await redis.sadd(`vmid-cache:{${node.id}}`, '103');
      expect(await nextFree()).toBe(104);
      expect(await reserveNext()).toBe(104);
      // An earlier version's refresh: the set replaced, refreshedAt moved, the index not rebuilt.
      await redis.del(`vmid-cache:{${node.id}}`);
      await redis.sadd(`vmid-cache:{${node.id}}`, '100', '105');
      await redis.hset(`vmid-meta:{${node.id}}`, 'refreshedAt', String(Date.now() + 7));
      expect(await nextFree()).toBe(101);
      expect(await reserveNext()).toBe(101);
      expect(await nextFree()).toBe(103);
      // An earlier version's reservation has no owner: anyone may release it, as before owners.
      expect(await store.release(node, 102, 'anyone')).toBe(true);
      // An earlier version's release takes its VMID out of the index without dropping the dense
      // hint that covers it (the run of used VMIDs a search starts after): the hint is checked
      // against the index, so the VMID is found again at once.
      const meta = `vmid-meta:{${node.id}}`;
      await store.refresh(node, [100, 105], 60, null);
      expect(await reserveNext()).toBe(102);
      expect(await reserveNext()).toBe(103);
      expect(await redis.hget(meta, 'dense')).toBe('100:104');
      expect(await store.release(node, 102, node.userId)).toBe(true);
      await redis.hset(meta, 'dense', '100:104');
      expect(await nextFree()).toBe(102);
      expect(await reserveNext()).toBe(102);
      // The index lost whole (evicted) while the set's meta stayed: rebuilt from what it indexes
      // only at the next fill, meanwhile every answer is checked; nothing is skipped for a hint.
      await redis.del(`vmid-used:{${node.id}}`);
      expect(await store.release(node, 101, node.userId)).toBe(true);
      expect(await nextFree()).toBe(101);
    });

    it('reads, fills and holder checks work right after Redis forgot its scripts (a restart, a new master)', async () => {
      // SCRIPT FLUSH would reach every other test file's connections on the shared test Redis:
      // only on the topologies' own servers.
      if (!opened.redis || url === TEST_REDIS_URL) return;
      const redis = opened.redis;
      const forgetScripts = () =>
        Promise.all((isCluster(redis) ? redis.nodes('master') : [redis]).map((r) => r.script('FLUSH')));
      const store = opened.store;
      await store.refresh(node, [100, 101], 60, null);
      expect(await reserveNext()).toBe(102);
      await forgetScripts();
      expect(await store.read(node)).toMatchObject({ reserved: [102], cache: { taken: [100, 101] } });
      await forgetScripts();
      const filled = await store.refresh(node, [100, 101, 103], 60, null);
      expect(filled.written && filled.snapshot.reserved).toEqual([102]);
      await forgetScripts();
      expect(await store.holder(node, 102)).toMatchObject({ owner: node.userId });
    });

    // The reuse hold (VMID_REUSE_HOLD_S). The other tests run without one (the helpers' default,
    // 0): they expect a freed VMID to be handed out again at once.
    const HOLD_MS = 1_000;
    /** A store of this kind with a reuse hold, and the search helpers on it. */
    const withHold = async (reuseHoldMs: number) => {
      const h = await openStore(kind, uniqueRedisPrefix(), url, { reuseHoldMs });
      const free = async (min = 100, max = VMID_MAX) => {
        const outcome = await h.store.nextFree(node, min, max);
        return outcome.status === 'free' ? outcome.vmid : outcome.status;
      };
      const next = async (more: Partial<ReserveRequest> = {}) => {
        const outcome = await reserveOne(h.store, node, req(null, more));
        return outcome.status === 'reserved' ? outcome.vmid : outcome.status;
      };
      return { h, store: h.store, free, next };
    };

    it('a freed VMID is skipped by searches for the reuse hold, then handed out: released, lapsed, a guest a fill no longer lists (also after an invalidation or expiry); explicitly reservable meanwhile', async () => {
      const { h, store, free, next } = await withHold(HOLD_MS);
      try {
        await store.refresh(node, [100, 101, 102, 103], 60, null);
        expect(await reserveOne(store, node, req(110, { ttlSeconds: 1 }))).toMatchObject({ status: 'reserved' }); // lapses below
        expect(await reserveOne(store, node, req(104))).toMatchObject({ status: 'reserved' });
        expect(await store.release(node, 104, node.userId)).toBe(true); // held
        expect(await free()).toBe(105);
        expect(await next()).toBe(105);
        // Free all the same: only the searches skip it.
        expect(await makeService(store, proxmox).isVmidTaken(node, 104)).toBe(false);
        // A guest destroyed: the next fill no longer lists it.
        await store.refresh(node, [100, 102, 103], 60, null);
        expect(await free()).toBe(106);
        // A guest gone while the set was not cached: compared with the set as last written.
        await store.invalidate(node); // e.g. a container unregistered
        await store.refresh(node, [100, 103], 60, null); // 102 went
        if (h.redis) {
          // The cache expired: its keys are gone.
          await h.redis.del(`vmid-cache:{${node.id}}`, `vmid-meta:{${node.id}}`, `vmid-used:{${node.id}}`);
          expect(await free()).toBe('miss');
        }
        await store.refresh(node, [103], 60, null); // 100 went
        expect(await free()).toBe(106);
        if (h.redis) {
          // A script of an earlier version (rolling upgrade) releases without holds: it takes a
          // held VMID out of the used index. The search checks its answer and skips it still.
          await h.redis.zrem(`vmid-used:{${node.id}}`, '104');
          expect(await free()).toBe(106);
        }
        expect(await free(100, 105)).toBe('exhausted');
        const snap = await store.read(node);
        expect(snap.cache?.taken).toEqual([103]);
        expect(snap.reserved).toEqual([105, 110]);
        // An explicit vmid: the client asked for it, and it is free.
        expect(await reserveOne(store, node, req(101))).toMatchObject({ status: 'reserved', vmid: 101 });
        expect(await reserveOne(store, node, req(102))).toMatchObject({ status: 'reserved', vmid: 102 });
        expect(await store.release(node, 102, node.userId)).toBe(true); // held again
        expect(await free()).toBe(106);

        await sleep(HOLD_MS + 100);
        // Those holds are over; 110 lapses now, and its own hold begins.
        expect(await free()).toBe(100);
        expect(await next()).toBe(100);
        expect(await next()).toBe(102);
        expect(await next()).toBe(104);
        expect(await free(107)).toBe(107);
        expect(await free(110)).toBe(111);
        expect(await next({ min: 110 })).toBe(111);
        expect((await store.read(node)).reserved).toEqual([100, 101, 102, 104, 105, 111]);
        await sleep(HOLD_MS + 100);
        expect(await free(110)).toBe(110);

        if (h.redis) {
          // In the space's hash slot; the holds expire by themselves (ended holds are swept: none
          // is left now), the set as last written lasts as long as the space; both go with it.
          const held = `vmid-held:{${node.id}}`;
          const last = `vmid-last:{${node.id}}`;
          expect(await h.redis.exists(held)).toBe(0);
          expect(await store.release(node, 111, node.userId)).toBe(true);
          expect(await h.redis.pttl(held)).toBeGreaterThan(0);
          expect(await h.redis.pttl(last)).toBe(-1);
          await store.forget(node);
          expect(await h.redis.exists(held, last)).toBe(0);
        }
      } finally {
        await h.close();
      }
    });

    it('a VMID released inside a run of reserved ones is skipped while held, then handed out before the VMIDs above', async () => {
      const { h, store, free, next } = await withHold(HOLD_MS);
      try {
        await store.refresh(node, [100, 101], 60, null);
        const run = await store.reserveMany(node, [req(null), req(null), req(null), req(null)]);
        expect(run.map((o) => (o.status === 'reserved' ? o.vmid : o.status))).toEqual([102, 103, 104, 105]);
        expect(await next()).toBe(106);
        expect(await store.release(node, 103, node.userId)).toBe(true);
        expect(await next()).toBe(107);
        expect(await free()).toBe(108);
        await sleep(HOLD_MS + 100);
        expect(await next()).toBe(103);
        expect(await free()).toBe(108);
      } finally {
        await h.close();
      }
    });

    it('a hold of 0 turns it off: a freed VMID is handed out again at once', async () => {
      const { h, store, free, next } = await withHold(0);
      try {
        await store.refresh(node, [100, 101, 102], 60, null);
        expect(await next()).toBe(103);
        expect(await store.release(node, 103, node.userId)).toBe(true);
        expect(await free()).toBe(103);
        await store.refresh(node, [100, 102], 60, null);
        expect(await free()).toBe(101);
        await store.invalidate(node);
        await store.refresh(node, [102], 60, null);
        expect(await next()).toBe(100);
        if (h.redis) expect(await h.redis.exists(`vmid-held:{${node.id}}`)).toBe(0);
      } finally {
        await h.close();
      }
    });

    it('with holds on, reserve and nextFree agree with the plain walk over the taken, reserved and held VMIDs (random changes)', async () => {
      // Holds that outlast the test: every VMID freed stays held.
      const { h, store, free, next } = await withHold(600_000);
      try {
        let seed = 7;
        const rand = (n: number) => {
          seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
          return seed % n;
        };
        const owners = ['alice', 'bob'];
        const held = new Set<number>();
        const holders = new Map<number, string>();
        let taken: number[] = [];
        const fill = async (set: number[]) => {
          for (const v of taken) if (!set.includes(v)) held.add(v);
          taken = set;
          await store.refresh(node, set, 60, null);
        };
        const subset = () => Array.from({ length: 60 }, (_, i) => 100 + i).filter(() => rand(3) === 0);
        await fill(subset());
        for (let step = 0; step < 200; step++) {
          const vmid = 100 + rand(70);
          const min = 100 + rand(40);
          const max = min + rand(60);
          const owner = owners[rand(2)]!;
          const expected = () => {
            const v = lowestFree(min, taken, holders.keys(), held);
            return v > max ? 'exhausted' : v;
          };
          switch (rand(8)) {
            case 0:
              await fill(subset());
              break;
            case 1: {
              const outcome = await reserveOne(store, node, req(vmid, { owner }));
              const status = taken.includes(vmid) ? 'taken' : holders.has(vmid) ? 'already-reserved' : 'reserved';
              expect(outcome.status, `step ${step}`).toBe(status);
              if (status === 'reserved') holders.set(vmid, owner);
              break;
            }
            case 2:
            case 3: {
              const want = expected();
              expect(await next({ min, max, owner }), `step ${step}`).toBe(want);
              if (want !== 'exhausted') holders.set(want, owner);
              break;
            }
            case 4: {
              const mine = holders.get(vmid) === owner;
              expect(await store.release(node, vmid, owner), `step ${step}`).toBe(mine);
              if (mine) {
                holders.delete(vmid);
                held.add(vmid);
              }
              break;
            }
            case 5:
              await store.consume(node, vmid);
              holders.delete(vmid);
              if (!taken.includes(vmid)) taken = [...taken, vmid].sort((a, b) => a - b);
              break;
            case 6:
              await store.invalidate(node);
              await fill(subset());
              break;
          }
          // The same set again, after whatever this step did: the Redis store then keeps its
          // cache and used index as they are.
          if (step % 5 === 4) await fill(taken);
          expect(await free(min, max), `step ${step}`).toBe(expected());
        }
        const snap = await store.read(node);
        expect(snap.cache?.taken).toEqual(taken);
        expect(snap.reserved).toEqual([...holders.keys()].sort((a, b) => a - b));
      } finally {
        await h.close();
      }
    });

    it('a deleted space registered again is revived: fills, reservations and invalidations work again, its version goes on after DELETED', async () => {
      const store = opened.store;
      await service.getCachedVmids(node); // REFRESHED 1
      await service.reserveVmid(node, 104, 600); // RESERVED 2
      const before = await store.state(node.spaceId);
      await service.nodeDeleted(node); // DELETED 3
      await expectCode(service.getCachedVmids(node), 'NOT_FOUND');
      // The cluster is registered again (by anyone) within the tombstone's day: the node
      // service tells VmidService.nodeCreated, which revives the space.
      const again = sameCluster(node);
      await store.revive(node); // the space's ref (node's id is the space's)
      const state = await store.state(again.spaceId);
      expect(state).toMatchObject({ version: 3, deleted: false });
      if (opened.redis) expect(await opened.redis.pttl(`vmid-version:{${node.spaceId}}`)).toBe(-1); // no longer expires
      // A fill that read the epoch before the deletion writes nothing.
      // (The store knows the space, not the registrations: `node` is the space's ref here.)
      expect(await store.refresh(node, [100], 60, before.epoch)).toEqual({ written: false, version: 3 });
      const events = service.subscribeNode(again);
      try {
        expect(brief(await take(events, 1))).toEqual(['SYNC@3']);
        expect(await service.getCachedVmids(again)).toMatchObject({
          nodeId: again.id,
          taken: TAKEN,
          reserved: [],
          version: 4,
        });
        // The reservation went with the deleted space.
        expect((await service.reserveVmid(again, undefined, 60)).vmid).toBe(104);
        expect(await service.invalidateVmidCache(again)).toBe(true);
        expect(await service.refreshVmidCache(again)).toMatchObject({ taken: TAKEN, reserved: [104], version: 7 });
        const got = await take(events, 4);
        expect(brief(got)).toEqual(['REFRESHED@4', 'RESERVED@5', 'INVALIDATED@6', 'REFRESHED@7']);
        expect(got.every((e) => e.nodeId === again.id)).toBe(true);
        // A space that is not a tombstone: nothing happens.
        await store.revive(node);
        await store.revive(newNode());
        expect(await store.state(again.spaceId)).toMatchObject({ version: 7, epoch: state.epoch + 1, deleted: false });
        // Deleted again: DELETED after the lot.
        await service.nodeDeleted(again); // DELETED 8
        expect(brief(await take(events, 1))).toEqual(['DELETED@8']);
      } finally {
        await events.return?.();
      }
    });

    it('subscriptions end cleanly: no listener is left behind', async () => {
      const its = Array.from({ length: 5 }, () => service.subscribeNode(node));
      for (const it of its) expect(brief(await take(it, 1))).toEqual(['SYNC@0']);
      await service.reserveVmid(node, undefined, 60);
      for (const it of its) expect(brief(await take(it, 2))).toEqual(['REFRESHED@1', 'RESERVED@2']);
      // return() while a next() is pending ends that next() too.
      const pending = its[0]!.next();
      for (const it of its) await it.return?.();
      expect((await pending).done).toBe(true);
      expect(service.nodesWatchedForLapses()).toBe(0);
      if (opened.fast instanceof MemoryVmidStore) expect(opened.fast.listenerCount()).toBe(0);
      else {
        // Besides the subscriptions' listeners: on a cluster, a kept snapshot's own watch of its space.
        const fast = opened.fast as RedisVmidStore;
        expect(fast.eventHub().listenerCount() - fast.watchedSpaces()).toBe(0);
      }
    });

    it('keeps the guest listing with the set it came with and as long (putGuests, guests); VmidService.guests answers from it and fills a set without one once', async () => {
      const store = opened.store;
      expect(await store.guests(node)).toBeNull();
      const written = await store.refresh(node, [100, 101, 102], 60, null);
      if (!written.written) throw new Error('the set was not written');
      const listing = {
        guests: [
          { vmid: 100, type: 'qemu' as const, name: 'vm "one", ü 名', node: 'pve1', status: 'running' },
          { vmid: 101, type: 'lxc' as const, name: null, node: 'pve2', status: 'unknown' },
          { vmid: 102, type: 'qemu' as const, name: null, node: null, status: null },
        ],
        refreshedAt: written.snapshot.cache.refreshedAt,
        expiresAt: written.snapshot.cache.expiresAt,
      };
      await store.putGuests(node, listing);
      expect(await store.guests(node)).toEqual(listing);
      // It expires with its set.
      const short = await store.refresh(node, [100], 1, null);
      if (!short.written) throw new Error('the set was not written');
      const shortListing = {
        guests: listing.guests.slice(0, 1),
        refreshedAt: short.snapshot.cache.refreshedAt,
        expiresAt: short.snapshot.cache.expiresAt,
      };
      await store.putGuests(node, shortListing);
      expect(await store.guests(node)).toEqual(shortListing);
      await sleep(1_100);
      expect((await store.read(node)).cache).toBeNull();
      expect(await store.guests(node)).toBeNull();

      // The service, with a fetch that lists guests (as the node service's does).
      const lister = new VmidService({
        store,
        cacheTtlSeconds: 60,
        authority: proxmox.authority,
        fetchTakenVmids: async () => {
          const guests = await proxmox.client.guests(proxmox.sim.target());
          return { taken: guests.map((g) => g.vmid), guests };
        },
      });
      const other = newNode();
      const calls = proxmox.resourceCalls();
      const [set, guests] = await Promise.all([lister.getCachedVmids(other), lister.guests(other)]);
      expect(guests.map((g) => g.vmid)).toEqual(TAKEN);
      expect(set.taken).toEqual(TAKEN);
      const simGuest = proxmox.sim.guests().find((g) => g.vmid === 102)!;
      expect(guests.find((g) => g.vmid === 102)).toEqual({
        vmid: 102,
        type: simGuest.type,
        name: simGuest.name,
        node: simGuest.node,
        status: simGuest.status,
      });
      expect(new Set(guests.map((g) => g.type))).toEqual(new Set(['qemu', 'lxc']));
      expect(await lister.guests(other)).toEqual(guests);
      expect(proxmox.resourceCalls()).toBe(calls + 1);
      // A set written without a listing (an instance of an earlier version): asked once, then cached.
      await sleep(5); // a later write than the listing's (milliseconds)
      await store.refresh(other, TAKEN, 60, null);
      expect(await lister.guests(other)).toEqual(guests);
      expect(await lister.guests(other)).toEqual(guests);
      expect(proxmox.resourceCalls()).toBe(calls + 2);
      // Invalidated: the listing went with the set.
      await lister.invalidateVmidCache(other);
      expect(await lister.guests(other)).toEqual(guests);
      expect(proxmox.resourceCalls()).toBe(calls + 3);
      // A fetch that answers VMIDs alone keeps no listing.
      await expect(service.guests(newNode())).rejects.toThrow(/without a guest listing/);
    });
  });
}
