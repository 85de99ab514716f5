import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RedisVmidStore, VmidService } from '../../src/vmids/index.js';
import { expectCode } from '../proxmox/helpers.js';
import { TEST_REDIS_URL } from '../support/env.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { uniqueRedisPrefix } from '../support/test-server.js';
import {
  brief,
  eventually,
  makeService,
  newNode,
  numsub,
  type OpenStore,
  openStore,
  type Proxmox,
  startProxmox,
  take,
} from './helpers.js';

describe('Redis going away and coming back', () => {
  let proxmox: Proxmox;
  let proxy: TcpProxy;
  let behindProxy: OpenStore;
  let direct: OpenStore;
  let flaky: VmidService;
  let healthy: VmidService;

  beforeAll(async () => {
    proxmox = await startProxmox({ guests: 10, vmidGapEvery: 4 });
    const target = new URL(TEST_REDIS_URL);
    proxy = await startTcpProxy(target.hostname, Number(target.port || 6379));
    const prefix = uniqueRedisPrefix();
    behindProxy = await openStore('redis', prefix, proxy.url('redis'));
    direct = await openStore('redis', prefix);
    flaky = makeService(behindProxy.store, proxmox);
    healthy = makeService(direct.store, proxmox);
  });
  afterAll(async () => {
    await proxy.up().catch(() => undefined);
    await behindProxy.close();
    await direct.close();
    await proxy.close();
    await proxmox.close();
  });

  it('answers clearly while down and resumes by itself, subscriptions included', async () => {
    const node = newNode();
    expect((await flaky.getCachedVmids(node)).version).toBe(1);
    const events = flaky.subscribeNode(node);
    expect(brief(await take(events, 1))).toEqual(['SYNC@1']);
    const leaving = newNode();
    const leavingEvents = flaky.subscribeNode(leaving);
    await take(leavingEvents, 1);
    const leavingChannel = (behindProxy.store as RedisVmidStore).channel(leaving.spaceId);
    expect(await numsub(leavingChannel)).toBe(1);

    await proxy.down();
    const calls = proxmox.resourceCalls();

    // Read-only set: answered from Proxmox directly, marked as not cached, reservations unknown.
    const fallback = await flaky.getCachedVmids(node);
    expect(fallback).toMatchObject({
      taken: [100, 101, 102, 103, 105, 106, 107, 108, 110, 111],
      reserved: [],
      fromCache: false,
      version: 1,
    });
    expect(proxmox.resourceCalls()).toBe(calls + 1);
    // Everything that must see reservations, or change them, needs Redis: a clear error.
    await expectCode(flaky.reserveVmid(node, undefined, 60), 'SERVICE_UNAVAILABLE');
    await expectCode(flaky.isVmidTaken(node, 104), 'SERVICE_UNAVAILABLE');
    await expectCode(flaky.nextFreeVmid(node), 'SERVICE_UNAVAILABLE');
    await expectCode(flaky.releaseVmid(node, 104), 'SERVICE_UNAVAILABLE');
    await expectCode(flaky.invalidateVmidCache(node), 'SERVICE_UNAVAILABLE');
    const late = flaky.subscribeNode(node);
    await expectCode(late.next(), 'SERVICE_UNAVAILABLE');
    // Node management's hooks do not fail the change they follow.
    await flaky.containerRegistered(node, 104);
    // Leaving while down: the Redis subscription must not come back with the reconnect.
    await leavingEvents.return?.();
    // Long enough for ioredis to give up on the queued UNSUBSCRIBE (it flushes its offline
    // queue every other reconnect attempt); it would re-subscribe the channel on reconnect.
    await sleep(2_000);

    // Meanwhile another instance changes the set: the flaky subscriber cannot hear it.
    await healthy.reserveVmid(node, 104, 60); // version 2

    await proxy.up();
    await eventually(
      async () => {
        try {
          return (await flaky.isVmidTaken(node, 104)) === true;
        } catch {
          return false;
        }
      },
      10_000,
      'the flaky instance to reach Redis again',
    );
    // The subscription came back by itself and tells about the version it missed…
    expect(brief(await take(events, 1, 10_000))).toEqual(['SYNC@2']);
    // …and hears new changes again, from either instance.
    await healthy.releaseVmid(node, 104);
    await flaky.reserveVmid(node, 109, 60);
    expect(brief(await take(events, 2))).toEqual(['RELEASED@3', 'RESERVED@4']);
    expect(await flaky.getCachedVmids(node)).toMatchObject({ fromCache: true, reserved: [109], version: 4 });
    await eventually(async () => (await numsub(leavingChannel)) === 0, 5_000, 'the stale subscription to go');
    expect(await numsub((behindProxy.store as RedisVmidStore).channel(node.spaceId))).toBe(1);
    await events.return?.();
  });

  it('a lapse whose RESERVED was missed during an outage is still announced once pub/sub is back', async () => {
    const node = newNode();
    expect((await flaky.getCachedVmids(node)).version).toBe(1);
    const events = flaky.subscribeNode(node);
    try {
      expect(brief(await take(events, 1))).toEqual(['SYNC@1']);
      // The subscription's first sweep (one round trip, nothing due) ends before the outage; a
      // sweep cut by the outage would be retried after 5 s and find the lapse by itself.
      await sleep(300);
      await proxy.down();
      // The flaky instance cannot hear this, so its lapse timer for the node is not moved…
      await healthy.reserveVmid(node, 999, 4); // version 2
      await proxy.up();
      // …and nothing reads or changes the node afterwards: the resync must set it.
      expect(brief(await take(events, 2, 15_000))).toEqual(['SYNC@2', 'RELEASED@3']);
      expect(await healthy.getCachedVmids(node)).toMatchObject({ reserved: [], version: 3 });
    } finally {
      await events.return?.();
    }
  });
});
