import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateNode } from '../nodes/documents.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import {
  subscribeSse as sseSubscription,
  type Subscription,
  subscribeWs as wsSubscription,
} from '../support/subscriptions.js';
import { createTestDatabase } from '../support/test-database.js';
import { metricValue, startTestServer, type TestServer, uniqueRedisPrefix } from '../support/test-server.js';
import { VmidEvents } from '../vmids/documents.js';

/**
 * A watcher per cluster, not per client: while a cluster has subscribers on any instance, one
 * instance probes its tasks every VMID_WATCH_INTERVAL_S and lists its guests when they changed,
 * so guests created or destroyed behind pvegraph's back reach subscribers as REFRESHED within
 * the interval plus one second, with Proxmox asked at most once per interval per cluster.
 */

const INTERVAL_S = 1;
const ENV = { VMID_WATCH_INTERVAL_S: String(INTERVAL_S) };
/** The contract's bound: the interval plus one second. */
const WITHIN_MS = INTERVAL_S * 1000 + 1000;

interface Event {
  nodeId: string;
  kind: string;
  version: number;
  vmids: number[] | null;
}

type Subscriber = Subscription<Event>;

const subscribeWs = (server: TestServer, token: string, nodeId?: string) =>
  wsSubscription<Event>(server, token, VmidEvents, nodeId ? { nodeId } : {});
const subscribeSse = (server: TestServer, token: string, nodeId?: string) =>
  sseSubscription<Event>(server, token, VmidEvents, nodeId ? { nodeId } : {});

const probes = (server: TestServer, outcome: string) =>
  metricValue(server, `pvegraph_cluster_watch_probes_total{outcome="${outcome}"}`).then((v) =>
    Number.isNaN(v) ? 0 : v,
  );
const allProbes = async (server: TestServer) => {
  let n = 0;
  for (const o of ['unchanged', 'changed', 'unknown']) n += await probes(server, o);
  return n;
};
const listings = (server: TestServer) =>
  metricValue(server, 'pvegraph_cluster_watch_listings_total{outcome="ok"}').then((v) => (Number.isNaN(v) ? 0 : v));

/** Where each subscriber's events stand, and when: taken right before a change behind pvegraph's back. */
function mark(subs: Subscriber[]): { at: number; seen: Map<Subscriber, number> } {
  return { at: performance.now(), seen: new Map(subs.map((s) => [s, s.events.length])) };
}

/**
 * Waits until `sub` has a REFRESHED event after `since` matching `test`; answers how long it
 * took from the mark.
 */
async function refreshedWithin(
  sub: Subscriber,
  since: ReturnType<typeof mark>,
  test: (vmids: number[]) => boolean,
  timeoutMs = WITHIN_MS,
): Promise<number> {
  const from = since.seen.get(sub) ?? 0;
  await expect
    .poll(() => sub.events.slice(from).some((e) => e.kind === 'REFRESHED' && e.vmids !== null && test(e.vmids)), {
      timeout: timeoutMs,
      interval: 20,
    })
    .toBe(true);
  return performance.now() - since.at;
}

async function createNode(server: TestServer, sim: Simulator, token: string): Promise<string> {
  const res = await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token);
  expect(res.errors).toBeUndefined();
  return res.data!.createNode.id;
}

/** The watch has taken its lease and compared one probe with the one before (its baseline). */
async function settled(...servers: TestServer[]): Promise<void> {
  await expect
    .poll(async () => (await Promise.all(servers.map((s) => probes(s, 'unchanged')))).reduce((a, b) => a + b, 0), {
      timeout: 10_000,
    })
    .toBeGreaterThanOrEqual(1);
}

describe('cluster watcher: one instance (Redis)', () => {
  let server: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;

  beforeAll(async () => {
    [server, sim] = await Promise.all([
      startTestServer({ env: ENV }),
      startTestSimulator({ guests: 4, clusterName: 'watched', nodeNames: ['pve1', 'pve2'] }),
    ]);
    token = (await server.createUser()).token;
    nodeId = await createNode(server, sim, token);
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  it("brings a guest created and one destroyed behind pvegraph's back to WebSocket and SSE subscribers as REFRESHED within the interval + 1 s", async () => {
    const ws = subscribeWs(server, token, nodeId);
    const sse = subscribeSse(server, token);
    try {
      await expect.poll(() => ws.events.length > 0 && sse.events.length > 0).toBe(true);
      await settled(server);

      let at = mark([ws, sse]);
      const guest = sim.addGuest({ node: 'pve2', name: 'behind-the-back' });
      for (const sub of [ws, sse])
        expect(await refreshedWithin(sub, at, (v) => v.includes(guest.vmid))).toBeLessThanOrEqual(WITHIN_MS);

      const victim = sim.guests()[0]!.vmid;
      at = mark([ws, sse]);
      expect(sim.removeGuest(victim)).toBe(true);
      for (const sub of [ws, sse]) {
        expect(
          await refreshedWithin(sub, at, (v) => !v.includes(victim) && v.includes(guest.vmid)),
        ).toBeLessThanOrEqual(WITHIN_MS);
      }
      for (const e of ws.events.filter((e) => e.kind !== 'SYNC')) expect(e.nodeId).toBe(nodeId);
    } finally {
      await Promise.all([ws.close(), sse.close()]);
    }
  });

  it('lists guests only when a guest task appeared, and stops probing when the last subscriber leaves', async () => {
    const ws = subscribeWs(server, token, nodeId);
    await expect.poll(() => ws.events.length).toBeGreaterThanOrEqual(1);
    await sleep(1_500);
    sim.stats.reset();
    const listed = await listings(server);
    await sleep(3_200);
    // No change: tasks probed once per interval, no listing.
    expect(sim.stats.count('/cluster/tasks')).toBeGreaterThanOrEqual(2);
    expect(sim.stats.count('/cluster/tasks')).toBeLessThanOrEqual(4);
    expect(sim.stats.count('/cluster/resources')).toBe(0);
    expect(await listings(server)).toBe(listed);

    await ws.close();
    await sleep(300); // a probe already on its way may still land
    sim.stats.reset();
    await sleep(2_500);
    expect(sim.stats.count('/cluster/tasks')).toBe(0);
    expect(sim.stats.count('/cluster/resources')).toBe(0);
  });
});

describe('cluster watcher: two instances', () => {
  let a: TestServer;
  let b: TestServer;
  let sim: Simulator;
  let alice: string;
  let bob: string;
  let aliceNode: string;
  let bobNode: string;
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  const stopped = new Set<TestServer>();

  beforeAll(async () => {
    const prefix = uniqueRedisPrefix();
    db = await createTestDatabase();
    // Neither server owns the database: either may be stopped first.
    [a, b, sim] = await Promise.all([
      startTestServer({ databaseUrl: db.url, redisKeyPrefix: prefix, env: ENV }),
      startTestServer({ databaseUrl: db.url, redisKeyPrefix: prefix, env: ENV }),
      startTestSimulator({ guests: 5, clusterName: 'shared', nodeNames: ['pve1', 'pve2', 'pve3'] }),
    ]);
    alice = (await a.createUser()).token;
    bob = (await a.createUser()).token;
    aliceNode = await createNode(a, sim, alice);
    bobNode = await createNode(b, sim, bob);
  });
  afterAll(async () => {
    await Promise.all([...[a, b].filter((s) => !stopped.has(s)).map((s) => s.stop()), sim.stop()]);
    await db.drop();
  });

  it('asks /cluster/tasks at most once per interval in all, /cluster/resources only on a change; the other instance takes over when the watching one stops', async () => {
    const subs = [
      subscribeWs(a, alice, aliceNode),
      subscribeWs(a, alice),
      subscribeWs(b, bob, bobNode),
      subscribeSse(b, bob, bobNode),
    ];
    try {
      await expect.poll(() => subs.every((s) => s.events.length > 0)).toBe(true);
      await settled(a, b);
      await sleep(500);

      sim.stats.reset();
      const [pa, pb] = [await allProbes(a), await allProbes(b)];
      await sleep(4_200);
      const tasks = sim.stats.count('/cluster/tasks');
      expect(tasks).toBeGreaterThanOrEqual(3);
      expect(tasks).toBeLessThanOrEqual(5);
      expect(sim.stats.count('/cluster/resources')).toBe(0);
      // One instance watches.
      const grewA = (await allProbes(a)) - pa;
      const grewB = (await allProbes(b)) - pb;
      expect([grewA, grewB].filter((n) => n > 0)).toHaveLength(1);

      // A change reaches every subscriber, on both instances, through one listing.
      sim.stats.reset();
      const at = mark(subs);
      const guest = sim.addGuest({ node: 'pve3' });
      for (const sub of subs)
        expect(await refreshedWithin(sub, at, (v) => v.includes(guest.vmid))).toBeLessThanOrEqual(WITHIN_MS);
      await sleep(1_200);
      expect(sim.stats.count('/cluster/resources')).toBe(1);

      // The watching instance stops: the other takes over (its lease tick, a few seconds) and
      // changes go on arriving.
      const [watching, other] = grewA > 0 ? [a, b] : [b, a];
      const left = subs.filter((_, i) => (other === a ? i < 2 : i >= 2));
      await watching.stop();
      stopped.add(watching);
      const before = await allProbes(other);
      const gone = sim.guests()[0]!.vmid;
      const stoppedAt = mark(left);
      expect(sim.removeGuest(gone)).toBe(true);
      for (const sub of left)
        expect(await refreshedWithin(sub, stoppedAt, (v) => !v.includes(gone), 8_000)).toBeLessThanOrEqual(8_000);
      expect(await allProbes(other)).toBeGreaterThan(before);

      // Once it watches, within the interval + 1 s again; still once per interval.
      sim.stats.reset();
      const next = mark(left);
      const late = sim.addGuest({ node: 'pve1' });
      for (const sub of left)
        expect(await refreshedWithin(sub, next, (v) => v.includes(late.vmid))).toBeLessThanOrEqual(WITHIN_MS);
      await sleep(2_000);
      expect(sim.stats.count('/cluster/tasks')).toBeLessThanOrEqual(
        Math.ceil((performance.now() - next.at) / 1000) + 1,
      );
      expect(sim.stats.count('/cluster/resources')).toBe(1);
    } finally {
      await Promise.all(subs.map((s) => s.close()));
    }
  });
});

describe('cluster watcher: embedded (no Redis)', () => {
  let server: TestServer;
  let sim: Simulator;

  beforeAll(async () => {
    [server, sim] = await Promise.all([startTestServer({ redis: false, env: ENV }), startTestSimulator({ guests: 3 })]);
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  it('works the same with one instance: changes within the interval + 1 s, one probe per interval, none without subscribers', async () => {
    const { token } = await server.createUser();
    const nodeId = await createNode(server, sim, token);
    const ws = subscribeWs(server, token, nodeId);
    const other = subscribeWs(server, token);
    try {
      await expect.poll(() => ws.events.length > 0 && other.events.length > 0).toBe(true);
      await settled(server);
      // Nothing was cached: the watch took its baseline from the tasks, listed nothing, told nothing.
      expect([...ws.events, ...other.events].map((e) => e.kind)).toEqual(['SYNC', 'SYNC']);
      expect(sim.stats.count('/cluster/resources')).toBe(0);

      let at = mark([ws, other]);
      const guest = sim.addGuest({ type: 'qemu' });
      expect(await refreshedWithin(ws, at, (v) => v.includes(guest.vmid))).toBeLessThanOrEqual(WITHIN_MS);
      at = mark([ws, other]);
      sim.removeGuest(guest.vmid);
      expect(await refreshedWithin(ws, at, (v) => !v.includes(guest.vmid))).toBeLessThanOrEqual(WITHIN_MS);
      expect(await refreshedWithin(other, at, (v) => !v.includes(guest.vmid))).toBeLessThanOrEqual(WITHIN_MS);

      sim.stats.reset();
      await sleep(3_200);
      expect(sim.stats.count('/cluster/tasks')).toBeGreaterThanOrEqual(2);
      expect(sim.stats.count('/cluster/tasks')).toBeLessThanOrEqual(4);
      expect(sim.stats.count('/cluster/resources')).toBe(0);
    } finally {
      await Promise.all([ws.close(), other.close()]);
    }
    await sleep(300);
    sim.stats.reset();
    await sleep(2_500);
    expect(sim.stats.count('/cluster/tasks')).toBe(0);
  });
});
