import { randomUUID } from 'node:crypto';
import { isCluster, type RedisClient } from '../../src/redis/redis.js';
import pino from 'pino';
import { expect } from 'vitest';
import type { ProxmoxClient } from '../../src/proxmox/index.js';
import { connectRedis } from '../../src/redis/redis.js';
import { startSimulator, type Simulator, type SimulatorOptions } from '../../src/sim/index.js';
import { type Database, openPostgres } from '../../src/db/database.js';
import {
  DurableVmidStore,
  MemoryVmidStore,
  type NodeRef,
  RedisVmidStore,
  ReservationRecord,
  type ReserveOutcome,
  type ReserveRequest,
  type VmidAuthority,
  type VmidEvent,
  VmidService,
  type VmidStore,
} from '../../src/vmids/index.js';
import { createTestDatabase } from '../support/test-database.js';
import { makeClient } from '../proxmox/helpers.js';
import { TEST_REDIS_URL } from '../support/env.js';

export const silentLog = pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' });

/** A Redis command connection as the server makes it (src/redis/redis.ts). */
export function connect(keyPrefix: string, url = TEST_REDIS_URL): Promise<RedisClient> {
  return connectRedis(url, keyPrefix, silentLog);
}

/** The simulator plus a real ProxmoxClient, and the fetcher the node service will provide. */
export interface Proxmox {
  sim: Simulator;
  client: ProxmoxClient;
  fetchTakenVmids: (node: NodeRef) => Promise<number[]>;
  /** What the node service answers from Proxmox for reservations (nextid, next-id range). */
  authority: VmidAuthority;
  /** /cluster/resources requests so far. */
  resourceCalls(): number;
  close(): Promise<void>;
}

export async function startProxmox(opts: SimulatorOptions = {}): Promise<Proxmox> {
  const sim = await startSimulator({ host: '127.0.0.1', port: 0, ...opts });
  const client = makeClient();
  return {
    sim,
    client,
    fetchTakenVmids: async () => (await client.guests(sim.target())).map((g) => g.vmid),
    authority: {
      isFree: async (_node, vmid) => {
        try {
          await client.nextId(sim.target(), vmid);
          return true;
        } catch (err) {
          if ((err as { code?: string }).code === 'CONFLICT') return false;
          throw err;
        }
      },
      nextIdRange: () => client.nextIdRange(sim.target()),
    },
    resourceCalls: () => sim.stats.count('/cluster/resources'),
    async close() {
      await client.close();
      await sim.stop();
    },
  };
}

export function newNode(userId: string = randomUUID()): NodeRef {
  const id = randomUUID();
  return { id, userId, spaceId: id };
}

/** Another registration of `node`'s cluster (same VMID space), of `userId`. */
export function sameCluster(node: NodeRef, userId: string = randomUUID()): NodeRef {
  return { id: randomUUID(), userId, spaceId: node.spaceId };
}

/** A store of one kind, with whatever must be closed after the test. */
export interface OpenStore {
  store: VmidStore;
  /** The Redis or memory store itself (under the durable record for '*-durable'). */
  fast: VmidStore;
  /** The command connection (Redis stores only). */
  redis?: RedisClient;
  close(): Promise<void>;
}

/**
 * 'redis-local': a Redis store that keeps snapshots in memory (VMID_READ_CACHE_MS) for a
 * minute. '*-durable': the store as the server builds it, with the database as the durable
 * record of reservations (DurableVmidStore over ReservationRecord).
 */
export type StoreKind = 'memory' | 'redis' | 'redis-local' | 'memory-durable' | 'redis-durable';

let recordDb: Promise<Database> | null = null;
/** One database per test file for the reservation record (spaces are unique per test; dropped at the run's end). */
export function recordDatabase(): Promise<Database> {
  recordDb ??= createTestDatabase().then((db) => openPostgres(db.url));
  return recordDb;
}

/** Long enough that only a change, an expiry or a lost connection ends a kept snapshot within a test. */
export const LOCAL_READ_MS = 60_000;

/**
 * `prefix`: share one Redis key prefix between stores (instances of one deployment).
 * `reuseHoldMs`: the reuse hold (VMID_REUSE_HOLD_S); 0 by default, so a freed VMID is handed
 * out again at once unless a test opts in. `onSeed`: told each time the store reads a space's
 * reservations back from the durable record ('*-durable').
 */
export async function openStore(
  kind: StoreKind,
  prefix: string,
  url = TEST_REDIS_URL,
  opts: { reuseHoldMs?: number; onSeed?: (spaceId: string) => void } = {},
): Promise<OpenStore> {
  const reuseHoldMs = opts.reuseHoldMs ?? 0;
  const record = kind.endsWith('-durable') ? new ReservationRecord(await recordDatabase()) : null;
  const seeder = record
    ? {
        seeder: (spaceId: string) => {
          opts.onSeed?.(spaceId);
          return record.seedState(spaceId);
        },
      }
    : {};
  const durable = (fast: VmidStore) => (record ? new DurableVmidStore(fast, record, silentLog) : fast);
  if (kind === 'memory' || kind === 'memory-durable') {
    const fast = new MemoryVmidStore({ ...seeder, reuseHoldMs });
    const store = durable(fast);
    return { store, fast, close: () => store.close() };
  }
  const redis = await connect(prefix, url);
  const fast = new RedisVmidStore(redis, {
    log: silentLog,
    localReadMs: kind === 'redis-local' ? LOCAL_READ_MS : 0,
    reuseHoldMs,
    ...seeder,
  });
  const store = durable(fast);
  // Reads are kept once the pattern subscription is confirmed: from the test's first read on.
  if (kind === 'redis-local') await eventually(() => fast.keepsSnapshots(), 5_000, 'snapshots kept in memory');
  return {
    store,
    fast,
    redis,
    async close() {
      await store.close();
      await redis.quit().catch(() => redis.disconnect());
    },
  };
}

export function makeService(
  store: VmidStore,
  proxmox: Proxmox,
  overrides: { cacheTtlSeconds?: number; fillWaitMs?: number } = {},
) {
  return new VmidService({
    store,
    fetchTakenVmids: proxmox.fetchTakenVmids,
    authority: proxmox.authority,
    cacheTtlSeconds: overrides.cacheTtlSeconds ?? 60,
    log: silentLog,
    ...(overrides.fillWaitMs !== undefined ? { fillWaitMs: overrides.fillWaitMs } : {}),
  });
}

/** Pulls `n` events from `it` or fails after `timeoutMs`. */
export async function take(it: AsyncIterator<VmidEvent>, n: number, timeoutMs = 5_000): Promise<VmidEvent[]> {
  const out: VmidEvent[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < n) {
    const left = deadline - Date.now();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`timed out after ${out.length}/${n} events: ${JSON.stringify(brief(out))}`)),
        Math.max(left, 1),
      );
    });
    try {
      const r = await Promise.race([it.next(), timeout]);
      if (r.done) throw new Error(`iterator ended after ${out.length}/${n} events`);
      out.push(r.value);
    } finally {
      clearTimeout(timer);
    }
  }
  return out;
}

/** kind@version pairs, for readable assertions. */
export function brief(events: VmidEvent[]): string[] {
  return events.map((e) => `${e.kind}@${e.version}`);
}

/** Asserts `events` carry consecutive versions. */
export function expectConsecutive(events: VmidEvent[]): void {
  for (let i = 1; i < events.length; i++) {
    expect(events[i]!.version, brief(events).join(' ')).toBe(events[i - 1]!.version + 1);
  }
}

/** Polls `check` until it returns true (or throws after timeoutMs). */
export async function eventually(
  check: () => Promise<boolean> | boolean,
  timeoutMs = 5_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * Publishes `message` on `channel` (its full name) as an instance of another version would:
 * PUBLISH, or on a cluster SPUBLISH (ioredis prefixes a sharded channel itself).
 */
export async function publishRaw(redis: RedisClient, channel: string, message: string): Promise<void> {
  if (!isCluster(redis)) {
    await redis.publish(channel, message);
    return;
  }
  const prefix = redis.options.keyPrefix ?? '';
  await redis.spublish(channel.slice(prefix.length), message);
}

/** Subscribers of `channel` in Redis, counted by Redis itself (on a connection of its own). */
export async function numsub(channel: string): Promise<number> {
  const { Redis: RedisClient } = await import('ioredis');
  const r = new RedisClient(TEST_REDIS_URL, { lazyConnect: true });
  try {
    await r.connect();
    const reply = (await r.pubsub('NUMSUB', channel)) as [string, number];
    return Number(reply[1]);
  } finally {
    r.disconnect();
  }
}

/** One reservation, as a batch of one (the stores decide reservations in batches: reserveMany). */
export async function reserveOne(store: VmidStore, node: NodeRef, request: ReserveRequest): Promise<ReserveOutcome> {
  return (await store.reserveMany(node, [request]))[0]!;
}
