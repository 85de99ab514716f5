import { setTimeout as sleep } from 'node:timers/promises';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { connectRedis, type RedisClient } from '../../src/redis/redis.js';
import { MemoryWatchLease, RedisWatchLease, type WatchLease } from '../../src/clusters/lease.js';
import { compareTasks, cursorOf, parseCursor } from '../../src/clusters/task-cursor.js';
import { ProxmoxClient, type ProxmoxTask } from '../../src/proxmox/index.js';
import { type Simulator, startTestSimulator } from '../support/simulator.js';
import { TEST_REDIS_URL } from '../support/env.js';
import { uniqueRedisPrefix } from '../support/test-server.js';

// Its scripts take two keys of one hash tag: they must run on a Redis Cluster as on one server.
const redisAt = (url: string) => (): Promise<RedisClient> =>
  connectRedis(url, uniqueRedisPrefix(), pino({ level: 'silent' }));
describe.each([
  ['redis', redisAt(TEST_REDIS_URL)],
  ['Redis Cluster', redisAt(inject('redisClusterUrl'))],
  ['Sentinel', redisAt(inject('redisSentinelUrl'))],
  ['memory', async (): Promise<RedisClient | null> => null],
] as const)('cluster watch lease (%s)', (_kind, connect) => {
  let redis: RedisClient | null;
  let lease: WatchLease;

  beforeAll(async () => {
    redis = await connect();
    lease = redis ? new RedisWatchLease(redis) : new MemoryWatchLease();
  });
  afterAll(async () => {
    await redis?.quit();
  });

  it('has one holder at a time: renewed by it, released by it only, taken over once it lapses', async () => {
    expect(await lease.acquire('s1', 'a', 300)).toBe(true);
    expect(await lease.acquire('s1', 'b', 300)).toBe(false);
    expect(await lease.acquire('s1', 'a', 300)).toBe(true); // renewal
    await lease.release('s1', 'b'); // not b's to release
    expect(await lease.acquire('s1', 'b', 300)).toBe(false);
    await lease.release('s1', 'a');
    expect(await lease.acquire('s1', 'b', 300)).toBe(true);
    await sleep(350); // b died: its lease lapses
    expect(await lease.acquire('s1', 'c', 300)).toBe(true);
    expect(await lease.acquire('s2', 'a', 300)).toBe(true); // another space, its own lease
  });

  it('grants one probe per interval per space, whoever holds the lease; none without it', async () => {
    expect(await lease.acquire('p', 'a', 5_000)).toBe(true);
    expect(await lease.claimProbe('p', 'b', 400)).toBe(-1);
    expect(await lease.claimProbe('p', 'a', 400)).toBe(0);
    const wait = await lease.claimProbe('p', 'a', 400);
    expect(wait).toBeGreaterThan(300);
    expect(wait).toBeLessThanOrEqual(400);
    // A new holder right after a probe waits out the interval too.
    await lease.release('p', 'a');
    expect(await lease.acquire('p', 'b', 5_000)).toBe(true);
    expect(await lease.claimProbe('p', 'b', 400)).toBeGreaterThan(0);
    await sleep(420);
    expect(await lease.claimProbe('p', 'b', 400)).toBe(0);
  });

  it('keeps the cursor a holder saved for the next holder', async () => {
    expect(await lease.loadCursor('c')).toBeNull();
    expect(await lease.acquire('c', 'a', 5_000)).toBe(true);
    await lease.saveCursor('c', 'b', 'not-b'); // b does not hold it
    expect(await lease.loadCursor('c')).toBeNull();
    await lease.saveCursor('c', 'a', '{"x":1}');
    await lease.release('c', 'a');
    expect(await lease.loadCursor('c')).toBe('{"x":1}');
  });
});

const task = (upid: string, type: string, starttime: number, finished = true): ProxmoxTask => ({
  upid,
  node: 'pve',
  type,
  id: '100',
  user: 'root@pam',
  starttime,
  ...(finished ? { status: 'OK', endtime: starttime } : {}),
});

describe('task cursor', () => {
  it('tells a new guest task, a guest task that ended, and an answer that no longer reaches back', () => {
    const first = [task('U1', 'vzdump', 100), task('U2', 'qmcreate', 101)];
    expect(compareTasks(null, first)).toBe('unknown');
    const cursor = cursorOf(first);
    expect(compareTasks(cursor, first)).toBe('unchanged');
    // Other tasks do not matter.
    expect(compareTasks(cursor, [task('U3', 'vzdump', 102), ...first])).toBe('unchanged');
    for (const type of [
      'qmcreate',
      'vzcreate',
      'qmclone',
      'vzrestore',
      'qmrestore',
      'vzdestroy',
      'qmdestroy',
      'vzmigrate',
      'qmigrate',
    ]) {
      expect(compareTasks(cursor, [task('U4', type, 102), ...first])).toBe('changed');
    }
    // A running destroy: changed when it appears, and again when it ends.
    const running = [task('U5', 'qmdestroy', 103, false), ...first];
    expect(compareTasks(cursor, running)).toBe('changed');
    expect(compareTasks(cursorOf(running), running)).toBe('unchanged');
    expect(compareTasks(cursorOf(running), [task('U5', 'qmdestroy', 103), ...first])).toBe('changed');
    // Everything listed is newer than the last answer: something may have scrolled out.
    expect(compareTasks(cursor, [task('U9', 'vzdump', 500)])).toBe('unknown');
    expect(parseCursor(JSON.stringify(cursor))).toEqual(cursor);
    expect(parseCursor('{"done":1}')).toBeNull();
    expect(parseCursor('not json')).toBeNull();
  });
});

describe('ProxmoxClient.tasks', () => {
  let sim: Simulator;
  const client = new ProxmoxClient({ timeoutMs: 3_000, allowLoopbackHosts: true, allowPrivateHosts: true });

  beforeAll(async () => {
    sim = await startTestSimulator({ guests: 2 });
  });
  afterAll(async () => {
    await Promise.all([sim.stop(), client.close()]);
  });

  it("lists the simulator's task log, newest first, with what the UPID carries", async () => {
    const guest = sim.addGuest({ type: 'lxc' });
    sim.removeGuest(guest.vmid);
    const tasks = await client.tasks(sim.target());
    expect(tasks.slice(0, 2).map((t) => [t.type, t.id])).toEqual([
      ['vzdestroy', String(guest.vmid)],
      ['vzcreate', String(guest.vmid)],
    ]);
    expect(tasks[0]).toMatchObject({ upid: expect.stringMatching(/^UPID:/), node: sim.localNode, status: 'OK' });
    expect(tasks[0]!.starttime).toBeGreaterThan(1_600_000_000);
    expect(tasks.map((t) => t.upid)).toEqual(sim.tasks().map((t) => t.upid));
  });
});
