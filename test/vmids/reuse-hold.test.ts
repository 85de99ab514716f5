import { describe, expect, it } from 'vitest';
import { MemoryVmidStore, VMID_MAX } from '../../src/vmids/index.js';
import type { NextFreeOutcome } from '../../src/vmids/store.js';
import { newNode, reserveOne } from './helpers.js';

/**
 * The reuse hold (VMID_REUSE_HOLD_S) on a clock of the test's own: what the contract suite
 * cannot wait for in real time (a cache that expired between two fills, holds that end exactly
 * when they should). The contract suite covers the same rules on every store.
 */
describe('reuse hold (memory store, a clock of its own)', () => {
  const HOLD_MS = 60_000;
  const open = () => {
    let now = 1_000_000_000;
    const store = new MemoryVmidStore({ now: () => now, reuseHoldMs: HOLD_MS });
    const node = newNode();
    const free = async (min = 100): Promise<number | NextFreeOutcome['status']> => {
      const o = await store.nextFree(node, min, VMID_MAX);
      return o.status === 'free' ? o.vmid : o.status;
    };
    return { store, node, free, advance: (ms: number) => (now += ms) };
  };

  it('a fill after the cache expired holds the guests that went since the last fill; the hold ends exactly after VMID_REUSE_HOLD_S', async () => {
    const { store, node, free, advance } = open();
    await store.refresh(node, [100, 101, 102], 60, null);
    advance(61_000); // the cache expired
    expect(await free()).toBe('miss');
    await store.refresh(node, [100, 102], 60, null); // 101 went meanwhile
    expect(await free()).toBe(103);
    advance(HOLD_MS - 1);
    await store.refresh(node, [100, 102], 60, null); // a fill while held keeps it held
    expect(await free()).toBe(103);
    advance(1);
    expect(await free()).toBe(101);
    expect(
      (await reserveOne(store, node, { vmid: null, min: 100, max: VMID_MAX, owner: 'u', ttlSeconds: 60 })).status,
    ).toBe('reserved');
    expect(await free()).toBe(103);
  });

  it("a space's first fill has nothing to compare with: nothing is held", async () => {
    const { store, node, free } = open();
    await store.refresh(node, [100, 102], 60, null);
    expect(await free()).toBe(101);
  });

  it('a reservation that lapses is held from when it ended; one consumed is not freed until a fill no longer lists it', async () => {
    const { store, node, free, advance } = open();
    await store.refresh(node, [100], 3_600, null);
    const reserve = (vmid: number | null, ttlSeconds = 10) =>
      reserveOne(store, node, { vmid, min: 100, max: VMID_MAX, owner: 'u', ttlSeconds });
    expect(await reserve(101)).toMatchObject({ status: 'reserved' });
    expect(await reserve(102, 600)).toMatchObject({ status: 'reserved' });
    advance(10_000); // 101 lapses (announced by the next look), held until now + HOLD_MS
    expect(await free()).toBe(103);
    expect((await store.read(node)).reserved).toEqual([102]);
    expect(await store.consume(node, 102)).toEqual({ released: true, added: true });
    expect(await free()).toBe(103);
    advance(HOLD_MS);
    expect(await free()).toBe(101);
    // The consumed guest is destroyed: the next fill no longer lists it.
    await store.refresh(node, [100], 3_600, null);
    expect(await free(102)).toBe(103);
    advance(HOLD_MS);
    expect(await free(102)).toBe(102);
  });

  it('forget drops the holds and the last set; a revived space starts without them', async () => {
    const { store, node, free } = open();
    await store.refresh(node, [100, 101], 60, null);
    await store.refresh(node, [100], 60, null);
    expect(await free()).toBe(102);
    await store.forget(node);
    await store.revive(node);
    await store.refresh(node, [100], 60, null);
    expect(await free()).toBe(101);
    // REFRESHED 1, REFRESHED 2, DELETED 3, REFRESHED 4: on from the DELETED event's.
    expect(await store.state(node.id)).toMatchObject({ deleted: false, version: 4 });
  });
});
