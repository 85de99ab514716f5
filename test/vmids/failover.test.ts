import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisHealth } from '../../src/redis/redis.js';
import type { NodeRef, VmidEvent } from '../../src/vmids/index.js';
import { EVENT_LOG_KEEP } from '../../src/vmids/store.js';
import {
  NODE_TIMEOUT_MS,
  type RedisNode,
  type RedisTopology,
  startRedisCluster,
  startSentinelGroup,
  TEST_PORTS,
  until,
} from '../support/redis-topologies.js';
import { uniqueRedisPrefix } from '../support/test-server.js';
import { makeService, newNode, openStore, type Proxmox, startProxmox, reserveOne } from './helpers.js';

/**
 * A master dies (killed by its pid, as a crash would) while two instances reserve VMIDs as
 * fast as they can; its replica is promoted (Redis Cluster by the other masters, Sentinel by
 * the sentinels). Nothing is handed out twice, nothing acknowledged is lost, and a subscriber
 * hears the space's events again, without a restart of anything.
 *
 * Each topology here is this file's own (TEST_PORTS.failover…): the run's shared
 * ones (global-setup.ts) keep their masters.
 */
const SPACES = 6;
/** Reservations acknowledged before the master is killed, and after the failover. */
const BEFORE = 30;
const AFTER = 30;

interface Granted {
  space: string;
  vmid: number;
  owner: string;
}

describe.each([
  ['Redis Cluster', () => startRedisCluster(TEST_PORTS.failoverCluster)],
  ['Sentinel', () => startSentinelGroup(TEST_PORTS.failoverSentinelRedis, TEST_PORTS.failoverSentinels)],
] as const)('failover of a master (%s)', (_name, start) => {
  let topology: RedisTopology;
  let proxmox: Proxmox;

  beforeAll(async () => {
    [topology, proxmox] = await Promise.all([start(), startProxmox({ guests: 10 })]);
  }, 60_000);
  afterAll(async () => {
    await Promise.all([topology?.stop(), proxmox?.close()]);
  });

  it('loses no reservation, hands none out twice, and its subscribers resume', async () => {
    const prefix = uniqueRedisPrefix();
    const [a, b] = await Promise.all([
      openStore('redis-durable', prefix, topology.url),
      openStore('redis-durable', prefix, topology.url),
    ]);
    const services = [makeService(a.store, proxmox), makeService(b.store, proxmox)];
    const nodes: NodeRef[] = Array.from({ length: SPACES }, () => newNode());
    const subscription = services[1]!.subscribeNode(nodes[0]!);
    const heard: VmidEvent[] = [];
    const hearing = (async () => {
      for await (const event of subscription) heard.push(event);
    })();
    try {
      // The master to kill: the one that holds the first space's keys (on a cluster, its shard).
      await services[0]!.reserveVmid(nodes[0]!, undefined, 600);
      const victim = await masterOf(topology.nodes, `${prefix}vmid-version:{${nodes[0]!.spaceId}}`);
      const victimPid = await victim.pid();

      const granted: Granted[] = [];
      let failures = 0;
      let stop = false;
      let killedAt = -1;
      const worker = async (i: number) => {
        while (!stop) {
          const node = nodes[i % SPACES]!;
          try {
            const r = await services[i % 2]!.reserveVmid(node, undefined, 600);
            granted.push({ space: node.spaceId, vmid: r.vmid, owner: node.userId });
          } catch {
            failures++; // SERVICE_UNAVAILABLE while the shard has no master: nothing was reserved
            await new Promise((r) => setTimeout(r, 20));
          }
        }
      };
      const load = Array.from({ length: 8 }, (_, i) => worker(i));
      await until(async () => granted.length >= BEFORE, `${BEFORE} reservations before the kill`);
      killedAt = granted.length;
      const space0 = { id: nodes[0]!.spaceId, userId: nodes[0]!.spaceId, spaceId: nodes[0]!.spaceId };
      const versionBefore = (await a.store.state(space0.id)).version;
      process.kill(victimPid, 'SIGKILL');
      // /readyz's view: the instance sees the master gone, then the promoted replica.
      await until(
        async () => (await redisHealth(a.redis!, probe)) === 'failing over',
        'redis health: failing over',
        20 * NODE_TIMEOUT_MS,
      );
      // Reservations of the victim's space go through again once a replica was promoted.
      await until(
        async () =>
          granted.slice(killedAt).filter((g) => g.space === nodes[0]!.spaceId).length >= AFTER / SPACES &&
          granted.length - killedAt >= AFTER,
        'reservations after the failover',
        20 * NODE_TIMEOUT_MS + 30_000,
      );
      stop = true;
      await Promise.all(load);
      await until(
        async () => (await redisHealth(a.redis!, probe)) === 'ok',
        'redis health: ok again',
        20 * NODE_TIMEOUT_MS + 30_000,
      );
      expect(() => process.kill(victimPid, 0)).toThrow(); // the master really is gone

      // The promoted replica numbers the space's versions on from well past anything the dead
      // master may have announced, and the subscriber never hears a version twice: after its
      // SYNCs, versions only grow.
      expect((await a.store.state(space0.id)).version).toBeGreaterThanOrEqual(versionBefore + EVENT_LOG_KEEP);

      // Nothing handed out twice.
      const keys = granted.map((g) => `${g.space}/${g.vmid}`);
      expect(new Set(keys).size).toBe(keys.length);
      // Nothing lost: every acknowledged reservation is still its holder's — a third party asking
      // for it is refused (a reservation the new master lacks is put back from the record).
      for (const g of granted) {
        const outcome = await reserveOne(
          a.store,
          { id: g.space, userId: g.space, spaceId: g.space },
          { vmid: g.vmid, min: 100, max: 999_999_999, owner: 'intruder', ttlSeconds: 60 },
        );
        expect(outcome, `${g.space}/${g.vmid}`).toEqual({ status: 'already-reserved', vmid: g.vmid });
        expect((await a.store.holder({ id: g.space, userId: g.space, spaceId: g.space }, g.vmid))?.owner).toBe(g.owner);
      }

      // The subscriber (on the other instance) hears the space again without being restarted.
      const seen = heard.length;
      const after = await services[0]!.reserveVmid(nodes[0]!, undefined, 600);
      await until(
        async () => heard.slice(seen).some((e) => e.kind === 'RESERVED' && e.vmids?.includes(after.vmid)),
        'the RESERVED event after the failover',
      );
      for (let i = 1; i < heard.length; i++) {
        if (heard[i]!.kind !== 'SYNC')
          expect(heard[i]!.version, heard.map((e) => `${e.kind}@${e.version}`).join(' ')).toBeGreaterThan(
            heard[i - 1]!.version,
          );
      }
      // Reported for the run's log: how the load went through the failover.
      console.info(`${_name}: ${granted.length} reservations, ${failures} refused while failing over`);
    } finally {
      await subscription.return?.();
      await hearing.catch(() => undefined);
      await Promise.all([a.close(), b.close()]);
    }
  }, 120_000);
});

const probe = (fn: () => Promise<unknown>) =>
  Promise.race([
    fn().then(
      () => true,
      () => false,
    ),
    new Promise<boolean>((r) => setTimeout(() => r(false), 500)),
  ]);

/** The master node whose keyspace holds `key` (a master that does not own its slot answers MOVED). */
async function masterOf(nodes: RedisNode[], key: string): Promise<RedisNode> {
  for (const node of nodes) {
    const r = new Redis({
      host: '127.0.0.1',
      port: node.port,
      lazyConnect: true,
      maxRetriesPerRequest: 0,
      retryStrategy: () => null,
    });
    r.on('error', () => undefined);
    try {
      await r.connect();
      if (!(await r.info('replication')).includes('role:master')) continue;
      if ((await r.exists(key).catch(() => 0)) === 1) return node;
    } finally {
      r.disconnect();
    }
  }
  throw new Error(`no master holds ${key}`);
}
