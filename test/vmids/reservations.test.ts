import { Redis } from 'ioredis';
import { afterEach, describe, expect, it } from 'vitest';
import { DomainError } from '../../src/errors.js';
import { TEST_REDIS_URL } from '../support/env.js';
import { uniqueRedisPrefix } from '../support/test-server.js';
import { VMID_MAX } from '../../src/vmids/index.js';
import { makeService, newNode, type OpenStore, openStore, type Proxmox, startProxmox, reserveOne } from './helpers.js';

describe('reservations across instances', () => {
  const cleanup: Array<{ close(): Promise<void> }> = [];
  afterEach(async () => {
    for (const c of cleanup.splice(0).reverse()) await c.close();
  });

  async function twoInstances(proxmox: Proxmox) {
    const prefix = uniqueRedisPrefix();
    const a: OpenStore = await openStore('redis', prefix);
    const b: OpenStore = await openStore('redis', prefix);
    cleanup.push(a, b);
    return [makeService(a.store, proxmox), makeService(b.store, proxmox)] as const;
  }

  it('200 concurrent "next free" reservations on two instances get 200 distinct free VMIDs', async () => {
    const proxmox = await startProxmox({ guests: 120, vmidGapEvery: 5 });
    cleanup.push(proxmox);
    const services = await twoInstances(proxmox);
    const node = newNode();
    const reservations = await Promise.all(
      Array.from({ length: 200 }, (_, i) => services[i % 2]!.reserveVmid(node, undefined, 60)),
    );
    const vmids = reservations.map((r) => r.vmid);
    expect(new Set(vmids).size).toBe(200);
    const guests = new Set(proxmox.sim.guests().map((g) => g.vmid));
    expect(vmids.filter((v) => guests.has(v))).toEqual([]);
    // Lowest-first: together with the guests they fill 100… without a hole.
    const all = [...guests, ...vmids].sort((x, y) => x - y);
    expect(all).toEqual(Array.from({ length: all.length }, (_, i) => 100 + i));
    expect(proxmox.resourceCalls()).toBe(1);
    const set = await services[1].getCachedVmids(node);
    expect(set.reserved).toEqual([...vmids].sort((x, y) => x - y));
  });

  it('200 concurrent reservations of one VMID on two instances: exactly one wins, the rest CONFLICT', async () => {
    const proxmox = await startProxmox({ guests: 10 });
    cleanup.push(proxmox);
    const services = await twoInstances(proxmox);
    const node = newNode();
    const results = await Promise.allSettled(
      Array.from({ length: 200 }, (_, i) => services[i % 2]!.reserveVmid(node, 4242, 60)),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    const codes = results.flatMap((r) => (r.status === 'rejected' ? [(r.reason as DomainError).code] : []));
    expect(codes).toEqual(Array(199).fill('CONFLICT'));
  });

  it('stays fast with 10,000 taken VMIDs', async () => {
    const proxmox = await startProxmox({ guests: 10_000 });
    cleanup.push(proxmox);
    const [service] = await twoInstances(proxmox);
    const node = newNode();
    await service.getCachedVmids(node);
    const start = performance.now();
    const got: number[] = [];
    for (let i = 0; i < 50; i++) got.push((await service.reserveVmid(node, undefined, 60)).vmid);
    const ms = performance.now() - start;
    expect(got).toEqual(Array.from({ length: 50 }, (_, i) => 10_100 + i));
    // ~1-3 ms each on a laptop; the bound only catches an accidental O(n²).
    expect(ms).toBeLessThan(2_500);
    expect(await service.nextFreeVmid(node)).toBe(10_150);
  });

  it('reserving the lowest free VMID costs about the same at 10,000 guests and 10,000 reservations as at 100 guests', async () => {
    const opened = await openStore('redis', uniqueRedisPrefix());
    cleanup.push(opened);
    const store = opened.store;
    const range = (from: number, n: number, step = 1) => Array.from({ length: n }, (_, i) => from + i * step);
    const small = newNode();
    const large = newNode();
    await store.refresh(small, range(100, 100), 600, null);
    await store.refresh(large, range(100, 10_000), 600, null);
    // Every other VMID after the guests: the free ones are gaps deep inside what is used.
    const held = range(10_100, 10_000, 2);
    for (let i = 0; i < held.length; i += 500) {
      await Promise.all(
        held
          .slice(i, i + 500)
          .map((vmid) =>
            reserveOne(store, large, { vmid, min: 100, max: VMID_MAX, owner: large.userId, ttlSeconds: 600 }),
          ),
      );
    }
    const timed = async (node: typeof small) => {
      const start = performance.now();
      const outcome = await reserveOne(store, node, {
        vmid: null,
        min: 100,
        max: VMID_MAX,
        owner: node.userId,
        ttlSeconds: 600,
      });
      return { ms: performance.now() - start, vmid: outcome.status === 'reserved' ? outcome.vmid : null };
    };
    const times = { small: [] as number[], large: [] as number[] };
    const got: Array<number | null> = [];
    // Interleaved, so whatever else the machine does weighs on both alike.
    for (let i = 0; i < 300; i++) {
      times.small.push((await timed(small)).ms);
      const r = await timed(large);
      times.large.push(r.ms);
      got.push(r.vmid);
    }
    expect(got).toEqual(range(10_101, 300, 2));
    const median = (xs: number[]) => [...xs].sort((x, y) => x - y)[xs.length >> 1]!;
    // A search that walks the set (20,000 ids here) takes tens of times longer; the bound
    // leaves room for a busy machine.
    expect(median(times.large)).toBeLessThan(3 * median(times.small));
  });

  it("reservations that find no set cached fill it on two instances with one listing, without reading the space's reservations", async () => {
    const proxmox = await startProxmox({ guests: 50 });
    cleanup.push(proxmox);
    const prefix = uniqueRedisPrefix();
    const a: OpenStore = await openStore('redis', prefix);
    const b: OpenStore = await openStore('redis', prefix);
    cleanup.push(a, b);
    const services = [makeService(a.store, proxmox), makeService(b.store, proxmox)] as const;
    const node = newNode();
    const vmids = (
      await Promise.all(Array.from({ length: 20 }, () => services[0].reserveVmid(node, undefined, 600)))
    ).map((r) => r.vmid);
    const client = new Redis(TEST_REDIS_URL);
    // Every command Redis runs, from anyone, in order: this test's are those naming its prefix.
    const monitor = await client.monitor();
    const seen: string[] = [];
    monitor.on('monitor', (_time: string, args: string[], source: string) => {
      // Command names as sent (ioredis: lower case) or as a script calls them: lower case here.
      const command = [args[0]!.toLowerCase(), ...args.slice(1)].join(' ');
      if (args[1]?.startsWith(prefix)) seen.push(source === 'lua' ? `lua: ${command}` : command);
    });
    // Every reservation of the space, read by the store for a snapshot (not by a script: a whole
    // build of the used index reads them too, and the scripts read the first or the last one).
    const readAll = `zrange ${prefix}vmid-reservations:{${node.spaceId}} 0 -1`;
    /** What Redis ran of this test's keys up to now: a marker command, then what came before it. */
    const ranUntilNow = async (): Promise<string[]> => {
      const marker = `${prefix}marker:${seen.length}`;
      await client.exists(marker);
      await expect.poll(() => seen.some((c) => c.endsWith(marker))).toBe(true);
      return seen.splice(0);
    };
    try {
      // After an invalidation the fill moves the kept set (REFRESH_DELTA); with the set as last
      // written gone too, it writes it whole (REFRESH).
      for (const lost of ['nothing', 'the set as last written']) {
        await services[0].invalidateVmidCache(node);
        if (lost !== 'nothing') await client.del(`${prefix}vmid-last:{${node.spaceId}}`);
        const listings = proxmox.resourceCalls();
        await ranUntilNow();
        const more = await Promise.all(
          Array.from({ length: 20 }, (_, i) => services[i % 2]!.reserveVmid(node, undefined, 600)),
        );
        vmids.push(...more.map((r) => r.vmid));
        expect(new Set(vmids).size, lost).toBe(vmids.length);
        expect(proxmox.resourceCalls(), lost).toBe(listings + 1);
        const ran = await ranUntilNow();
        // The reservations were made (a script's writes show), their reads were not.
        expect(
          ran.some((c) => c.startsWith(`lua: zadd ${prefix}vmid-reservations:`)),
          lost,
        ).toBe(true);
        expect(
          ran.filter((c) => c.startsWith(readAll)),
          lost,
        ).toEqual([]);
      }
      // A read wants the reservations: the monitor sees them read.
      const set = await services[1].getCachedVmids(node);
      expect(set.reserved).toEqual([...vmids].sort((x, y) => x - y));
      expect((await ranUntilNow()).filter((c) => c.startsWith(readAll))).toHaveLength(1);
    } finally {
      monitor.disconnect();
      client.disconnect();
    }
  });
});
