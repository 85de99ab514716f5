import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { MemoryVmidStore, type NodeRef, VMID_MAX } from '../../src/vmids/index.js';
import { LapseSweeper } from '../../src/vmids/lapse-sweeper.js';
import { newNode, reserveOne } from './helpers.js';

/** The in-process store, its expireDue calls counted. */
function countedStore() {
  const store = new MemoryVmidStore();
  const counted = {
    calls: 0,
    expireDue(node: NodeRef) {
      counted.calls++;
      return store.expireDue(node);
    },
  };
  return { store, counted };
}

describe('LapseSweeper', () => {
  it('asks the store once per node however many subscriptions watch it, and forgets it with the last', async () => {
    const { counted } = countedStore();
    const sweeper = new LapseSweeper(counted);
    const node = newNode();
    const unwatch = Array.from({ length: 50 }, () => sweeper.watch(node));
    await sleep(10);
    expect(counted.calls).toBe(1);
    expect(sweeper.watchedCount()).toBe(1);
    for (const u of unwatch.slice(1)) u();
    expect(sweeper.watchedCount()).toBe(1);
    unwatch[0]!();
    unwatch[0]!(); // twice is once
    expect(sweeper.watchedCount()).toBe(0);
  });

  it('a reconnect that makes every subscription resweep costs at most two store calls per node', async () => {
    const { counted } = countedStore();
    const sweeper = new LapseSweeper(counted);
    const node = newNode();
    sweeper.watch(node);
    await sleep(10);
    const before = counted.calls;
    for (let i = 0; i < 1_000; i++) sweeper.resweep([node.id]);
    await sleep(10);
    expect(counted.calls - before).toBeLessThanOrEqual(2);
    expect(counted.calls - before).toBeGreaterThanOrEqual(1);
    sweeper.close();
  });

  it('after close nothing is watched or swept', async () => {
    const { store, counted } = countedStore();
    const sweeper = new LapseSweeper(counted);
    const node = newNode();
    await store.refresh(node, [100], 60, null);
    await reserveOne(store, node, { vmid: 101, min: 100, max: VMID_MAX, owner: node.userId, ttlSeconds: 1 });
    sweeper.watch(node);
    await sleep(10);
    expect(counted.calls).toBe(1); // armed for the reservation's expiry
    sweeper.close();
    sweeper.watch(node);
    await sleep(1_100);
    expect(counted.calls).toBe(1);
    expect(sweeper.watchedCount()).toBe(0);
  });
});
