import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { RedisVmidStore, VmidEvent, VmidService } from '../../src/vmids/index.js';
import { uniqueRedisPrefix } from '../support/test-server.js';
import {
  brief,
  eventually,
  expectConsecutive,
  makeService,
  newNode,
  numsub,
  type OpenStore,
  openStore,
  type Proxmox,
  startProxmox,
  take,
} from './helpers.js';

describe('VMID events across instances (Redis pub/sub)', () => {
  let proxmox: Proxmox;
  let a: OpenStore;
  let b: OpenStore;
  let serviceA: VmidService;
  let serviceB: VmidService;

  beforeAll(async () => {
    proxmox = await startProxmox({ guests: 10, vmidGapEvery: 4 });
    const prefix = uniqueRedisPrefix();
    a = await openStore('redis', prefix);
    b = await openStore('redis', prefix);
    serviceA = makeService(a.store, proxmox);
    serviceB = makeService(b.store, proxmox);
  });
  afterAll(async () => {
    await a.close();
    await b.close();
    await proxmox.close();
  });
  const storeB = () => b.store as RedisVmidStore;
  afterEach(async () => {
    await eventually(() => storeB().eventHub().listenerCount() === 0, 2_000, 'no listeners left');
  });

  it("a subscriber on B gets A's changes in order, with consecutive versions, after a SYNC", async () => {
    const node = newNode();
    await serviceA.getCachedVmids(node); // version 1
    const events = serviceB.subscribeNode(node);
    try {
      const [sync] = await take(events, 1);
      expect(sync).toMatchObject({ nodeId: node.id, kind: 'SYNC', version: 1, vmids: null });
      const r = await serviceA.reserveVmid(node, undefined, 60);
      await serviceA.releaseVmid(node, r.vmid);
      await serviceA.invalidateVmidCache(node);
      await serviceA.refreshVmidCache(node);
      await serviceA.reserveVmid(node, 4000, 60);
      await serviceA.consumeReservation(node, 4000);
      const got = await take(events, 6);
      expect(brief(got)).toEqual([
        'RESERVED@2',
        'RELEASED@3',
        'INVALIDATED@4',
        'REFRESHED@5',
        'RESERVED@6',
        'REFRESHED@7',
      ]);
      expect(got[0]!.vmids).toEqual([104]);
      expect(got[3]).toMatchObject({ vmids: null, added: [], removed: [] }); // refilled as it was
      expect(got[5]).toMatchObject({ vmids: null, added: [4000], removed: [] });
      expect(got.every((e) => e.nodeId === node.id && e.at instanceof Date)).toBe(true);
      expectConsecutive([sync!, ...got]);
    } finally {
      await events.return?.();
    }
  });

  it("a user subscription gets one SYNC per node, then every node's events; other users see nothing", async () => {
    const userId = crypto.randomUUID();
    const n1 = newNode(userId);
    const n2 = newNode(userId);
    const stranger = newNode();
    await serviceA.reserveVmid(n2, 5000, 60); // n2: REFRESHED 1, RESERVED 2
    const events = serviceB.subscribeUser(userId, [n1, n2]);
    try {
      const syncs = await take(events, 2);
      expect(syncs.map((e) => [e.nodeId, e.kind, e.version])).toEqual([
        [n1.id, 'SYNC', 0],
        [n2.id, 'SYNC', 2],
      ]);
      await serviceA.reserveVmid(stranger, 5000, 60);
      await serviceA.reserveVmid(n1, 5000, 60);
      await serviceA.releaseVmid(n2, 5000);
      const got = await take(events, 3);
      expect(
        got.map((e) => `${e.nodeId === n1.id ? 'n1' : e.nodeId === n2.id ? 'n2' : 'other'}:${e.kind}@${e.version}`),
      ).toEqual(['n1:REFRESHED@1', 'n1:RESERVED@2', 'n2:RELEASED@3']);
    } finally {
      await events.return?.();
    }
  });

  it('loses nothing between subscribing and the SYNC, even while changes stream in', async () => {
    const node = newNode();
    await serviceA.getCachedVmids(node);
    const total = 60;
    let stop = false;
    const writer = (async () => {
      for (let i = 0; i < total && !stop; i++) await serviceA.reserveVmid(node, undefined, 60);
    })();
    const subscribers: Array<Promise<VmidEvent[]>> = [];
    for (let i = 0; i < 8; i++) {
      subscribers.push(
        (async () => {
          const it = serviceB.subscribeNode(node);
          const out: VmidEvent[] = [];
          try {
            for (;;) {
              const [e] = await take(it, 1);
              out.push(e!);
              if (e!.version === total + 1) return out;
            }
          } finally {
            await it.return?.();
          }
        })(),
      );
      await new Promise((r) => setTimeout(r, 15));
    }
    try {
      for (const seq of await Promise.all(subscribers)) {
        expect(seq[0]!.kind).toBe('SYNC');
        expectConsecutive(seq);
      }
    } finally {
      stop = true;
      await writer;
    }
  });

  it('one Redis subscription per channel per process, freed when the last subscriber leaves', async () => {
    const userId = crypto.randomUUID();
    const node = newNode(userId);
    const channel = storeB().channel(node.spaceId);
    const its = Array.from({ length: 2_000 }, () => serviceB.subscribeNode(node));
    await Promise.all(its.map((it) => take(it, 1)));
    expect(await numsub(channel)).toBe(1);
    expect(storeB().eventHub().listenerCount(channel)).toBe(2_000);
    await serviceA.invalidateVmidCache(node);
    const got = await Promise.all(its.map((it) => take(it, 1)));
    expect(new Set(got.map(([e]) => `${e!.kind}@${e!.version}`))).toEqual(new Set(['INVALIDATED@1']));
    await Promise.all(its.slice(1).map(async (it) => it.return?.()));
    expect(await numsub(channel)).toBe(1);
    await its[0]!.return?.();
    expect(storeB().eventHub().listenerCount()).toBe(0);
    await eventually(async () => (await numsub(channel)) === 0, 2_000, 'PUBSUB NUMSUB 0');
  });

  it('a lapse watched from two instances is announced once, to the subscribers of both; a user subscription sees it too', async () => {
    const node = newNode();
    await serviceA.getCachedVmids(node); // REFRESHED 1
    const onA = serviceA.subscribeNode(node);
    const onB = serviceB.subscribeNode(node);
    // Every node of the user: the node and another one.
    const other = newNode(node.userId);
    const allOnB = serviceB.subscribeUser(node.userId, [other, node]);
    try {
      expect(brief(await take(onA, 1))).toEqual(['SYNC@1']);
      expect(brief(await take(onB, 1))).toEqual(['SYNC@1']);
      expect(brief(await take(allOnB, 2))).toEqual(['SYNC@0', 'SYNC@1']);
      await serviceB.reserveVmid(node, 4100, 1); // RESERVED 2, lapses after 1 s
      for (const it of [onA, onB, allOnB]) {
        const got = await take(it, 2, 4_000);
        expect(brief(got)).toEqual(['RESERVED@2', 'RELEASED@3']);
        expect(got[1]!.vmids).toEqual([4100]);
      }
      // Both instances' timers fired; only one found something to end.
      const more = await Promise.race([
        onA.next().then(() => 'event'),
        new Promise((r) => setTimeout(() => r('nothing'), 300)),
      ]);
      expect(more).toBe('nothing');
      expect((await serviceA.getCachedVmids(node)).version).toBe(3);
    } finally {
      await Promise.all([onA.return?.(), onB.return?.(), allOnB.return?.()]);
    }
    expect(serviceA.nodesWatchedForLapses() + serviceB.nodesWatchedForLapses()).toBe(0);
  });

  it('channel names carry the deployment prefix; another prefix hears nothing', async () => {
    const other = await openStore('redis', uniqueRedisPrefix());
    try {
      const otherService = makeService(other.store, proxmox);
      const node = newNode();
      expect(
        storeB()
          .channel(node.spaceId)
          .startsWith((b.redis!.options.keyPrefix ?? '') + 'vmid-events:'),
      ).toBe(true);
      const foreign = otherService.subscribeNode(node);
      const own = serviceB.subscribeNode(node);
      await take(foreign, 1);
      await take(own, 1);
      await serviceA.invalidateVmidCache(node);
      expect(brief(await take(own, 1))).toEqual(['INVALIDATED@1']);
      const none = await Promise.race([
        foreign.next().then(() => 'event'),
        new Promise((r) => setTimeout(() => r('nothing'), 200)),
      ]);
      expect(none).toBe('nothing');
      await foreign.return?.();
      await own.return?.();
    } finally {
      await other.close();
    }
  });
});
