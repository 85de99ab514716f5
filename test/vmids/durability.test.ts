import { setTimeout as sleep } from 'node:timers/promises';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openPostgres } from '../../src/db/database.js';
import type { RedisClient } from '../../src/redis/redis.js';
import { DurableVmidStore, RedisVmidStore, ReservationRecord } from '../../src/vmids/index.js';
import { SEED, SEED_ABANDON } from '../../src/vmids/redis-scripts.js';
import { spaceOf } from '../../src/vmids/spaces.js';
import { nodeKeys } from '../../src/vmids/redis-store.js';
import type { RefusedReservation, ReserveRequest } from '../../src/vmids/store.js';
import type { NodeRef } from '../../src/vmids/types.js';
import { expectCode } from '../proxmox/helpers.js';
import { createTestDatabase } from '../support/test-database.js';
import { deleteKeysWithPrefix } from '../support/redis-keys.js';
import { uniqueRedisPrefix } from '../support/test-server.js';
import {
  connect,
  makeService,
  newNode,
  openStore,
  type Proxmox,
  recordDatabase,
  sameCluster,
  silentLog,
  startProxmox,
  take,
} from './helpers.js';

/** Deletes every key of one deployment's prefix: what a Redis restart without persistence leaves. */
async function loseEveryKey(prefix: string): Promise<void> {
  const admin = await connect('');
  try {
    await deleteKeysWithPrefix(admin, prefix);
  } finally {
    admin.disconnect();
  }
}

/**
 * Redis as a replica behind by the given reservations of a space has it, seeded mark and all:
 * without their keys, and without the dense hint the scripts that made them left (the
 * replica's hint, if any, is from before them).
 */
async function loseReservations(
  redis: RedisClient,
  spaceId: string,
  vmids: readonly (string | number)[],
): Promise<void> {
  const members = vmids.map(String);
  await redis.zrem(`vmid-reservations:{${spaceId}}`, ...members);
  await redis.zrem(`vmid-used:{${spaceId}}`, ...members);
  await redis.hdel(`vmid-owners:{${spaceId}}`, ...members);
  await redis.hdel(`vmid-meta:{${spaceId}}`, 'dense');
}

/** SEED on a space's keys as the store calls it (not forced, no version floor): token, part, final, then the reservations. */
function seedCall(redis: RedisClient, spaceId: string) {
  return (token: string, part: number, final: boolean, ...held: string[]) =>
    redis.eval(
      SEED,
      11,
      ...nodeKeys(spaceId),
      'channel',
      JSON.stringify(spaceId),
      '0',
      '0',
      token,
      String(part),
      final ? '1' : '0',
      ...held,
    );
}

/**
 * Two instances of one deployment (one key prefix) over the durable record, with a service
 * each; `onSeed` as openStore's.
 */
async function twoInstances(proxmox: Proxmox, onSeed?: (spaceId: string) => void) {
  const prefix = uniqueRedisPrefix();
  const opts = onSeed ? { onSeed } : {};
  const [a, b] = await Promise.all([
    openStore('redis-durable', prefix, undefined, opts),
    openStore('redis-durable', prefix, undefined, opts),
  ]);
  return {
    prefix,
    a,
    b,
    services: [makeService(a.store, proxmox), makeService(b.store, proxmox)] as const,
    close: async () => void (await Promise.all([a.close(), b.close()])),
  };
}

describe('durable reservations', () => {
  let proxmox: Proxmox;

  beforeAll(async () => {
    proxmox = await startProxmox({ guests: 10 }); // 100…109
  });
  afterAll(async () => {
    await proxmox.close();
  });

  it('survive the loss of every Redis key: nobody is handed them again, their holders still own them', async () => {
    const { prefix, b, services, close } = await twoInstances(proxmox);
    try {
      const [onA, onB] = services;
      const alice = newNode();
      const bob = sameCluster(alice);
      const held = [
        await onA.reserveVmid(alice, undefined, 600),
        await onB.reserveVmid(bob, undefined, 600),
        await onA.reserveVmid(alice, 5000, 600),
      ];
      expect(held.map((r) => r.vmid)).toEqual([110, 111, 5000]);

      await loseEveryKey(prefix);

      // Every instance learns it at its next look, and gets them back before deciding anything:
      // also when that look asks who holds one (a keyed retry, a container's registration).
      expect(await b.store.holder(spaceOf(bob), 5000)).toEqual({ owner: alice.userId, expiresAt: held[2]!.expiresAt });
      expect((await onB.getCachedVmids(bob)).reserved).toEqual([110, 111, 5000]);
      expect((await onA.reserveVmid(alice, undefined, 600)).vmid).toBe(112);
      await expectCode(onB.reserveVmid(bob, 5000, 600), 'CONFLICT');
      expect(await onB.releaseVmid(bob, 110)).toBe(false); // alice's
      expect(await onA.releaseVmid(alice, 110)).toBe(true);
      expect(await onA.isVmidTaken(alice, 110)).toBe(false);
      expect(await onB.isVmidTaken(bob, 111)).toBe(true);
    } finally {
      await close();
    }
  });

  it('after the loss of every key, the used index comes from what the seed puts back (kept by releases), and the first fill adds its guests to it', async () => {
    const { prefix, a, services, close } = await twoInstances(proxmox);
    try {
      const [onA] = services;
      const alice = newNode();
      for (const vmid of [5000, 5002, 5004]) await onA.reserveVmid(alice, vmid, 600);
      await loseEveryKey(prefix);
      const used = () => a.redis!.zrange(`vmid-used:{${alice.spaceId}}`, 0, -1);
      const state = `vmid-version:{${alice.spaceId}}`;

      // A look that seeds without filling (who holds a VMID): the index is the reservations.
      expect(await a.store.holder(spaceOf(alice), 5002)).toMatchObject({ owner: alice.userId });
      expect(await a.redis!.hget(state, 'usedSeed')).toMatch(/^\d+$/);
      expect(await used()).toEqual(['5000', '5002', '5004']);
      expect(await onA.releaseVmid(alice, 5002)).toBe(true);
      expect(await used()).toEqual(['5000', '5004']);

      // The first fill adds the guests; the index is every guest and live reservation.
      expect((await onA.getCachedVmids(alice)).reserved).toEqual([5000, 5004]);
      expect(await a.redis!.hexists(state, 'usedSeed')).toBe(0);
      expect(await used()).toEqual([...(await proxmox.fetchTakenVmids(alice)), 5000, 5004].map(String));
      expect((await onA.reserveVmid(alice, undefined, 600)).vmid).toBe(110);
    } finally {
      await close();
    }
  });

  it('never hands out one VMID twice while reservations stream in from two instances and Redis loses everything midway', async () => {
    const { prefix, services, close } = await twoInstances(proxmox);
    try {
      const node = newNode();
      const got: number[] = [];
      const wave = (n: number) =>
        Promise.all(
          Array.from({ length: n }, (_, i) =>
            services[i % 2]!.reserveVmid(sameCluster(node, node.userId), undefined, 600).then((r) => got.push(r.vmid)),
          ),
        );
      await wave(40);
      await Promise.all([wave(40), loseEveryKey(prefix)]);
      await wave(40);
      expect(got).toHaveLength(120);
      expect(new Set(got).size).toBe(120);
      expect(got.every((v) => v >= 110)).toBe(true);
    } finally {
      await close();
    }
  });

  it('a space holding 60,000 reservations comes back from one read of the record when 32 concurrent calls on two instances find it lost (in parts: no call carries them all)', async () => {
    const seeds: string[] = [];
    const { services, close } = await twoInstances(proxmox, (spaceId) => seeds.push(spaceId));
    try {
      const node = newNode();
      // What a Redis that lost everything leaves: the reservations are in the record only.
      const expiresAt = new Date(Date.now() + 600_000);
      const held = Array.from({ length: 60_000 }, (_, i) => ({ vmid: 1000 + 2 * i, owner: node.userId, expiresAt }));
      await new ReservationRecord(await recordDatabase()).putMany(node.spaceId, held, 1);

      const calls = Array.from({ length: 32 }, (_, i) => {
        const service = services[i % 2]!;
        return i % 4 < 2
          ? service.reserveVmid(node, undefined, 600).then((r) => ({ reserved: r.vmid }))
          : service.getCachedVmids(node).then((s) => ({ read: s.reserved.length }));
      });
      const answers = await Promise.all(calls);

      // One instance claims the space and reads the record; the other waits for its seed.
      expect(seeds).toEqual([node.spaceId]);
      const reserved = answers.flatMap((x) => ('reserved' in x ? [x.reserved] : []));
      expect(new Set(reserved).size).toBe(16);
      expect(reserved.filter((v) => v >= 1000 && v < 121_000 && v % 2 === 0)).toEqual([]);
      // Every read saw the whole record back (and the reservations made meanwhile, at most).
      for (const x of answers) if ('read' in x) expect(x.read).toBeGreaterThanOrEqual(60_000);
    } finally {
      await close();
    }
  });

  it('a seed in parts whose earlier parts Redis lost marks nothing; one instance seeds a space at a time', async () => {
    const prefix = uniqueRedisPrefix();
    const redis = await connect(prefix);
    try {
      const node = newNode();
      const seed = seedCall(redis, node.spaceId);
      const until = String(Date.now() + 600_000);
      const state = `vmid-version:{${node.spaceId}}`;
      expect(await seed('a', 0, false, '100', until, 'alice')).toBe(1);
      // Another instance's seed waits while this one is under way.
      expect(await seed('b', 0, true)).toBe(-1);
      // Redis loses the space between two parts: the next part marks nothing.
      await loseEveryKey(prefix);
      expect(await seed('a', 1, true, '101', until, 'alice')).toBe(-2);
      expect(await redis.hget(state, 'seeded')).toBeNull();
      // A whole seed again: every part back, and only then seeded.
      expect(await seed('c', 0, false, '100', until, 'alice')).toBe(1);
      expect(await redis.hget(state, 'seeded')).toBeNull();
      expect(await seed('c', 1, true, '101', until, 'alice')).toBe(1);
      expect(await redis.hget(state, 'seeded')).toBe('1');
      expect(await redis.zrange(`vmid-reservations:{${node.spaceId}}`, 0, -1)).toEqual(['100', '101']);
      // Seeded: a late part of any seed changes nothing.
      expect(await seed('a', 1, true, '102', until, 'alice')).toBe(0);
    } finally {
      redis.disconnect();
    }
  });

  it('a space that lost its seeded mark while its cache had expired gets its whole index back at the next fill, not the kept set moved on', async () => {
    const prefix = uniqueRedisPrefix();
    const opened = await openStore('redis-durable', prefix);
    try {
      const service = makeService(opened.store, proxmox, { cacheTtlSeconds: 1 });
      const node = newNode();
      await service.reserveVmid(node, 5000, 600);
      await sleep(1_100);
      // The version hash goes (an eviction, a failover to a replica without it): SEED runs
      // again, with the set and index the expired cache kept still there.
      await opened.redis!.del(`vmid-version:{${node.spaceId}}`);
      expect((await service.getCachedVmids(node)).reserved).toEqual([5000]);
      const guests = await proxmox.fetchTakenVmids(node);
      expect(await opened.redis!.zrange(`vmid-used:{${node.spaceId}}`, 0, -1)).toEqual([...guests, 5000].map(String));
      expect(await opened.redis!.hexists(`vmid-version:{${node.spaceId}}`, 'usedSeed')).toBe(0);
    } finally {
      await opened.close();
    }
  });

  it('reservations put back while the cache has expired join the index kept for the next fill', async () => {
    const opened = await openStore('redis-durable', uniqueRedisPrefix());
    try {
      const service = makeService(opened.store, proxmox, { cacheTtlSeconds: 1 });
      const node = newNode();
      await service.getCachedVmids(node);
      await sleep(1_100);
      const until = new Date(Date.now() + 600_000);
      await opened.store.restore(spaceOf(node), [{ vmid: 7000, owner: node.userId, expiresAt: until }]);
      const used = `vmid-used:{${node.spaceId}}`;
      expect(await opened.redis!.zscore(used, '7000')).toBe('7000');
      expect((await service.getCachedVmids(node)).reserved).toEqual([7000]);
      const guests = await proxmox.fetchTakenVmids(node);
      expect(await opened.redis!.zrange(used, 0, -1)).toEqual([...guests, 7000].map(String));
    } finally {
      await opened.close();
    }
  });

  it('a seed started again after one that did not end indexes what the first put back; the index lives an hour unless a fill adopts it', async () => {
    const prefix = uniqueRedisPrefix();
    const redis = await connect(prefix);
    try {
      const node = newNode();
      const state = `vmid-version:{${node.spaceId}}`;
      const used = `vmid-used:{${node.spaceId}}`;
      const seed = seedCall(redis, node.spaceId);
      const until = String(Date.now() + 600_000);
      expect(await seed('d', 0, false)).toBe(1);
      expect(await seed('d', 1, false, '200', until, 'alice')).toBe(1);
      // Its instance gives the seed up; the next one claims the space and puts everything back.
      expect(await redis.eval(SEED_ABANDON, 1, state, 'd')).toBe(1);
      expect(await seed('e', 0, false)).toBe(1);
      expect(await seed('e', 1, true, '200', until, 'alice', '201', until, 'alice')).toBe(1);
      expect(await redis.zrange(used, 0, -1)).toEqual(['200', '201']);
      const since = Number(await redis.hget(state, 'usedSeed'));
      expect(await redis.pexpiretime(used)).toBe(since + 3_600_000);
    } finally {
      redis.disconnect();
    }
  });

  it('a seed that fails after its claim gives the space up at once: another instance seeds it without waiting for the claim to lapse', async () => {
    let recordDown = false;
    const { prefix, a, services, close } = await twoInstances(proxmox, () => {
      if (recordDown) throw new Error('the record cannot be read');
    });
    try {
      const [onA, onB] = services;
      const node = newNode();
      await onA.reserveVmid(node, 7100, 600);
      await loseEveryKey(prefix);

      recordDown = true;
      await expect(onA.getCachedVmids(node)).rejects.toThrow('the record cannot be read');
      // The claim went with the failure (it would hold every instance off for SEED_HOLD_MS).
      expect(await a.redis!.hget(`vmid-version:{${node.spaceId}}`, 'seedToken')).toBeNull();
      recordDown = false;
      expect((await onB.getCachedVmids(node)).reserved).toEqual([7100]);
    } finally {
      await close();
    }
  });

  it("keep the space's version going up across the loss of every Redis key", async () => {
    const prefix = uniqueRedisPrefix();
    const opened = await openStore('redis-durable', prefix);
    try {
      const service = makeService(opened.store, proxmox);
      const node = newNode();
      await service.reserveVmid(node, 6100, 600); // REFRESHED 1, RESERVED 2
      await service.invalidateVmidCache(node); // INVALIDATED 3
      const before = (await service.getCachedVmids(node)).version; // REFRESHED 4
      await new Promise((r) => setTimeout(r, 100)); // the background record of the version
      await loseEveryKey(prefix);
      // The kept events went with Redis: a subscriber resuming from before the loss starts over.
      const resumed = service.subscribeNode(node, 1);
      try {
        const [first] = await take(resumed, 1);
        expect(first).toMatchObject({ kind: 'SYNC' });
        expect(first!.version).toBeGreaterThanOrEqual(before);
      } finally {
        await resumed.return?.();
      }
      const after = await service.getCachedVmids(node);
      expect(after.version).toBeGreaterThan(before);
      expect(after.reserved).toEqual([6100]);
    } finally {
      await opened.close();
    }
  });

  it('survive the restart of an embedded instance (the in-process store is rebuilt from the record)', async () => {
    const before = await openStore('memory-durable', uniqueRedisPrefix());
    const node = newNode();
    const r = await makeService(before.store, proxmox).reserveVmid(node, 4242, 600);
    await before.close();
    const after = await openStore('memory-durable', uniqueRedisPrefix());
    try {
      // The rebuilt store's first look, asking who holds it (a keyed retry), finds it.
      expect(await after.store.holder(spaceOf(node), 4242)).toEqual({ owner: node.userId, expiresAt: r.expiresAt });
      const service = makeService(after.store, proxmox);
      expect(await service.isVmidTaken(node, r.vmid)).toBe(true);
      expect((await service.getCachedVmids(node)).reserved).toEqual([4242]);
      expect(await service.releaseVmid(node, 4242)).toBe(true);
    } finally {
      await after.close();
    }
  });

  it('a reservation a seeded Redis lost (failover to a replica behind) is put back, not handed out again', async () => {
    const prefix = uniqueRedisPrefix();
    const opened = await openStore('redis-durable', prefix);
    try {
      const service = makeService(opened.store, proxmox);
      const node = newNode();
      const other = sameCluster(node);
      await service.reserveVmid(node, 6000, 600);
      // The replica missed the reservation's keys but has the space's seeded mark.
      await loseReservations(opened.redis!, node.spaceId, [6000]);
      await expectCode(service.reserveVmid(other, 6000, 600), 'CONFLICT');
      expect(await service.isVmidTaken(other, 6000)).toBe(true);
      expect(await service.releaseVmid(node, 6000)).toBe(true);
    } finally {
      await opened.close();
    }
  });

  it('a lost reservation its holder releases while it is being put back does not come back', async () => {
    const opened = await openStore('redis-durable', uniqueRedisPrefix());
    try {
      const node = newNode();
      const other = sameCluster(node);
      const record = new ReservationRecord(await recordDatabase());
      let releasedMeanwhile: boolean | undefined;
      // The holder's release lands after the put-back read the record and before it writes
      // the row back to Redis (where the release found nothing of theirs).
      const racing = new Proxy(opened.fast, {
        get(target, prop) {
          if (prop === 'settleRefused') {
            return async (n: NodeRef, refused: RefusedReservation[]) => {
              if (releasedMeanwhile === undefined) releasedMeanwhile = await store.release(n, 6000, node.userId);
              return target.settleRefused(n, refused);
            };
          }
          const value: unknown = Reflect.get(target, prop);
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      const store = new DurableVmidStore(racing, record, silentLog);
      const service = makeService(store, proxmox);
      await service.reserveVmid(node, 6000, 600);
      // The replica missed the reservation's keys but has the space's seeded mark.
      await loseReservations(opened.redis!, node.spaceId, [6000]);
      await expectCode(service.reserveVmid(other, 6000, 600), 'CONFLICT');
      expect(releasedMeanwhile).toBe(true);
      // Released: neither Redis nor the record holds it, and it can be reserved again.
      expect(await service.isVmidTaken(other, 6000)).toBe(false);
      expect((await record.live(node.spaceId)).map((r) => r.vmid)).toEqual([]);
      expect((await service.reserveVmid(other, 6000, 600)).vmid).toBe(6000);
    } finally {
      await opened.close();
    }
  });

  it('reservations made meanwhile never meet one the seeded Redis lost: every live one of the space is put back at the first refusal', async () => {
    const { a, services, close } = await twoInstances(proxmox);
    try {
      const node = newNode();
      const lost: number[] = [];
      for (let i = 0; i < 30; i++) lost.push((await services[0].reserveVmid(node, undefined, 600)).vmid);
      expect(lost[0]).toBe(110);
      // A replica behind by 30 reservations, seeded mark and all: the lowest free VMIDs the
      // space now shows are all held in the record.
      const space = node.spaceId;
      await loseReservations(a.redis!, space, lost);

      const other = sameCluster(node);
      const got = await Promise.all(
        Array.from({ length: 10 }, (_, i) => services[i % 2]!.reserveVmid(other, undefined, 600)),
      );
      const vmids = got.map((r) => r.vmid).sort((x, y) => x - y);
      expect(vmids).toEqual(Array.from({ length: 10 }, (_, i) => 140 + i));
      expect((await services[1].getCachedVmids(node)).reserved).toEqual([...lost, ...vmids]);
      // Their holder still owns them; the other user does not.
      expect(await services[1].releaseVmid(other, lost[0]!)).toBe(false);
      expect(await services[1].releaseVmid(node, lost[0]!)).toBe(true);
    } finally {
      await close();
    }
  });

  it('a batch decided in parts, with its space lost in Redis between two parts, hands out no VMID twice: the first of a VMID made twice stands', async () => {
    const opened = await openStore('redis-durable', uniqueRedisPrefix());
    try {
      const node = newNode();
      await makeService(opened.store, proxmox).getCachedVmids(node); // guests 100…109
      const redis = opened.redis!;
      const fast = opened.fast;
      // The Redis store decides a batch of 12 as scripts of 8 and 4. Between the two, Redis
      // loses what the first made and the space's seeded mark (keys evicted one by one), so the
      // second runs on what the record gives back, which lacks the first part's reservations.
      let losses = 0;
      const parted = new Proxy(fast, {
        get(target, prop) {
          if (prop === 'reserveMany') {
            return async (n: NodeRef, requests: ReserveRequest[]) => {
              if (requests.length <= 8 || losses++ > 0) return target.reserveMany(n, requests);
              const first = await target.reserveMany(n, requests.slice(0, 8));
              const lost = first.flatMap((o) => (o.status === 'reserved' ? [String(o.vmid)] : []));
              await loseReservations(redis, n.id, lost);
              await redis.hdel(`vmid-version:{${n.id}}`, 'seeded');
              return [...first, ...(await target.reserveMany(n, requests.slice(8)))];
            };
          }
          const value: unknown = Reflect.get(target, prop);
          return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
        },
      });
      const store = new DurableVmidStore(parted, new ReservationRecord(await recordDatabase()), silentLog);
      const owners = Array.from({ length: 12 }, () => randomUUID());
      const outcomes = await store.reserveMany(
        node,
        owners.map((owner) => ({ vmid: null, min: 100, max: 999_999, owner, ttlSeconds: 600 })),
      );
      const vmids = outcomes.map((o) => (o.status === 'reserved' ? o.vmid : o.status));
      // The second part got 110…113 again; those of the first part stand, the second's are
      // made again above everything reserved.
      expect(losses).toBe(1);
      expect(vmids).toEqual([110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121]);
      expect((await store.read(node)).reserved).toEqual(vmids);
      // Each VMID is held by the request it was answered to, in Redis and in the record.
      expect(await store.release(node, 110, owners[8]!)).toBe(false);
      expect(await store.release(node, 110, owners[0]!)).toBe(true);
      expect(await store.release(node, 118, owners[8]!)).toBe(true);
    } finally {
      await opened.close();
    }
  });

  it('nothing is reserved or released when the record cannot keep it (SERVICE_UNAVAILABLE)', async () => {
    const testDb = await createTestDatabase();
    const db = await openPostgres(testDb.url);
    const redis = await connect(uniqueRedisPrefix());
    const store = new DurableVmidStore(
      new RedisVmidStore(redis, { log: silentLog }),
      new ReservationRecord(db),
      silentLog,
    );
    try {
      const service = makeService(store, proxmox);
      const node = newNode();
      await service.reserveVmid(node, 7001, 600);
      await testDb.drop();
      await expectCode(service.reserveVmid(node, 7000, 600), 'SERVICE_UNAVAILABLE');
      expect(await service.isVmidTaken(node, 7000)).toBe(false);
      // The record still holds 7001: a release it cannot record does not happen (in Redis
      // either, where a loss would bring the record's reservation back after all).
      await expectCode(service.releaseVmid(node, 7001), 'SERVICE_UNAVAILABLE');
      expect(await service.isVmidTaken(node, 7001)).toBe(true);
    } finally {
      await store.close();
      await db.close().catch(() => undefined);
      redis.disconnect();
    }
  });

  it('expire exactly when they should: an expired record neither comes back nor blocks the VMID', async () => {
    const prefix = uniqueRedisPrefix();
    const opened = await openStore('redis-durable', prefix);
    try {
      const service = makeService(opened.store, proxmox);
      const node = newNode();
      await service.reserveVmid(node, 8000, 1);
      await new Promise((r) => setTimeout(r, 1_100));
      await loseEveryKey(prefix);
      expect(await service.isVmidTaken(node, 8000)).toBe(false);
      expect((await service.reserveVmid(sameCluster(node), 8000, 60)).vmid).toBe(8000);
      const record = new ReservationRecord(await recordDatabase());
      expect((await record.live(node.spaceId)).map((r) => r.vmid)).toEqual([8000]);
    } finally {
      await opened.close();
    }
  });
});
