import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { CreateNode, DeleteNode, RegisterContainer, UnregisterContainer } from '../nodes/documents.js';
import { TEST_REDIS_URL } from '../support/env.js';
import { FAST_PATHS_OFF, fastPathsOn } from '../support/fast-paths.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { subscribeSse, subscribeWs } from '../support/subscriptions.js';
import { startTcpProxy } from '../support/tcp-proxy.js';
import { metricValue, startTestServer, type TestServer } from '../support/test-server.js';
import {
  InvalidateVmidCache,
  IsVmidTaken,
  NextFreeVmid,
  NodeVmids,
  RefreshVmidCache,
  ReleaseVmid,
  ReserveVmid,
  VmidEvents,
  VmidsTaken,
} from './documents.js';

interface Event {
  nodeId: string;
  kind: string;
  version: number;
  at: string;
  vmids: number[] | null;
  added: number[];
  removed: number[];
  expiresAt: string | null;
}

const code = (res: { errors?: Array<{ extensions?: Record<string, unknown> }> }) => res.errors?.[0]?.extensions?.code;

/** A graphql-ws subscription collecting events. */
const subscribe = (server: TestServer, token: string, nodeId?: string) =>
  subscribeWs<Event>(server, token, VmidEvents, nodeId ? { nodeId } : {});

/** The simulator's guest ids, as Proxmox would list them. */
const guestIds = (sim: Simulator) =>
  sim
    .guests()
    .map((g) => g.vmid)
    .sort((a, b) => a - b);

describe.each([
  ['Redis', true],
  ['embedded (in-process)', false],
] as const)('VMIDs over GraphQL with %s cache and pub/sub', (_name, redis) => {
  let server: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;

  beforeAll(async () => {
    [server, sim] = await Promise.all([
      startTestServer({ redis }),
      startTestSimulator({ guests: 8, clusterName: 'lab', nodes: 2 }),
    ]);
    token = (await server.createUser()).token;
    nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  it('serves vmidsTaken from Proxmox on a miss, then from the cache, and node.vmids agrees', async () => {
    const first = (await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken;
    expect(first).toMatchObject({ nodeId, taken: guestIds(sim), reserved: [], fromCache: false });
    expect(new Date(first.expiresAt).getTime() - new Date(first.refreshedAt).getTime()).toBe(
      server.config.vmidCacheTtlS * 1000,
    );
    const calls = sim.stats.count('/cluster/resources');
    const second = (await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken;
    expect(second).toMatchObject({ taken: first.taken, fromCache: true, version: first.version });
    expect(sim.stats.count('/cluster/resources')).toBe(calls);
    expect((await server.gql(NodeVmids, { id: nodeId }, token)).data!.node!.vmids).toMatchObject({
      taken: first.taken,
    });
  });

  it('shows a guest created at Proxmox after invalidate (read-through) and after refresh', async () => {
    const a = sim.addGuest({ vmid: 4100, node: 'pve2', type: 'lxc' }).vmid;
    expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken.taken).not.toContain(a);
    expect((await server.gql(InvalidateVmidCache, { nodeId }, token)).data!.invalidateVmidCache).toBe(true);
    const reread = (await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken;
    expect(reread).toMatchObject({ fromCache: false });
    expect(reread.taken).toContain(a);

    const b = sim.addGuest({ vmid: 4101, type: 'qemu' }).vmid;
    const refreshed = (await server.gql(RefreshVmidCache, { nodeId }, token)).data!.refreshVmidCache;
    expect(refreshed.taken).toEqual(guestIds(sim));
    expect(refreshed.taken).toContain(b);
    expect(refreshed.version).toBeGreaterThan(reread.version);
  });

  it('reserves atomically: lowest free by default, CONFLICT when taken or reserved, counted as taken until released', async () => {
    const taken = guestIds(sim);
    const lowestFree = (() => {
      let v = 100;
      while (taken.includes(v)) v++;
      return v;
    })();
    const r = (await server.gql(ReserveVmid, { nodeId, ttlSeconds: 120 }, token)).data!.reserveVmid;
    expect(r).toMatchObject({ nodeId, vmid: lowestFree });
    expect(new Date(r.expiresAt).getTime()).toBeGreaterThan(Date.now() + 100_000);
    expect((await server.gql(IsVmidTaken, { nodeId, vmid: r.vmid }, token)).data!.isVmidTaken).toBe(true);
    expect((await server.gql(NextFreeVmid, { nodeId }, token)).data!.nextFreeVmid).not.toBe(r.vmid);
    expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken.reserved).toEqual([r.vmid]);

    expect(code(await server.gql(ReserveVmid, { nodeId, vmid: r.vmid }, token))).toBe('CONFLICT');
    expect(code(await server.gql(ReserveVmid, { nodeId, vmid: taken[0]! }, token))).toBe('CONFLICT');
    const bad = await server.gql(ReserveVmid, { nodeId, vmid: 99, ttlSeconds: 0 }, token);
    expect(code(bad)).toBe('BAD_USER_INPUT');

    expect((await server.gql(ReleaseVmid, { nodeId, vmid: r.vmid }, token)).data!.releaseVmid).toBe(true);
    expect((await server.gql(ReleaseVmid, { nodeId, vmid: r.vmid }, token)).data!.releaseVmid).toBe(false);
    expect((await server.gql(IsVmidTaken, { nodeId, vmid: r.vmid }, token)).data!.isVmidTaken).toBe(false);
  });

  it('consumes a reservation when a container is registered for it; the VMID joins the cached set', async () => {
    const r = (await server.gql(ReserveVmid, { nodeId, vmid: 7000 }, token)).data!.reserveVmid;
    // The client creates the container at Proxmox with its reserved VMID, then registers it.
    sim.addGuest({ vmid: r.vmid, type: 'lxc' });
    const container = (
      await server.gql(RegisterContainer, { input: { nodeId, vmid: r.vmid, hostname: 'ct-7000' } }, token)
    ).data!.registerContainer;
    const set = (await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken;
    expect(set.reserved).not.toContain(7000);
    expect(set.taken).toContain(7000);
    await server.gql(UnregisterContainer, { id: container.id }, token);
    sim.removeGuest(7000);
  });

  it('a registered container holds its VMID until it is unregistered, whether Proxmox lists it or not', async () => {
    await server.gql(VmidsTaken, { nodeId }, token);
    const vmid = 7100; // Proxmox does not list it (yet)
    const sub = subscribe(server, token, nodeId);
    try {
      await expect.poll(() => sub.events.length).toBe(1);
      const container = (await server.gql(RegisterContainer, { input: { nodeId, vmid } }, token)).data!
        .registerContainer;
      expect((await server.gql(IsVmidTaken, { nodeId, vmid }, token)).data!.isVmidTaken).toBe(true);
      expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken.taken).toContain(vmid);
      expect(code(await server.gql(ReserveVmid, { nodeId, vmid }, token))).toBe('CONFLICT');
      expect((await server.gql(NextFreeVmid, { nodeId, min: vmid }, token)).data!.nextFreeVmid).toBe(vmid + 1);
      // Asking Proxmox again, or dropping the cache, does not free it.
      expect((await server.gql(RefreshVmidCache, { nodeId }, token)).data!.refreshVmidCache.taken).toContain(vmid);
      await server.gql(InvalidateVmidCache, { nodeId }, token);
      expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken.taken).toContain(vmid);
      // No event ever showed it free while the container was registered: the registration
      // added it, and no later change removed it.
      const refreshed = sub.events.filter((e) => e.kind === 'REFRESHED');
      expect(refreshed[0]).toMatchObject({ added: [vmid], removed: [] });
      expect(refreshed.some((e) => e.removed.includes(vmid))).toBe(false);
      for (const e of refreshed) expect(e.vmids).toContain(vmid);

      await server.gql(UnregisterContainer, { id: container.id }, token);
      expect((await server.gql(IsVmidTaken, { nodeId, vmid }, token)).data!.isVmidTaken).toBe(false);
    } finally {
      await sub.close();
    }
  });

  it('streams every change in order with consecutive versions, starting with SYNC (WebSocket)', async () => {
    // Fill the cache first: a reservation against an empty cache fills it (a REFRESHED event).
    await server.gql(VmidsTaken, { nodeId }, token);
    const sub = subscribe(server, token, nodeId);
    try {
      await expect.poll(() => sub.events.length).toBe(1);
      const sync = sub.events[0]!;
      expect(sync).toMatchObject({ kind: 'SYNC', nodeId, vmids: null });
      const held = (await server.gql(ReserveVmid, { nodeId, vmid: 8000 }, token)).data!.reserveVmid;
      await server.gql(ReleaseVmid, { nodeId, vmid: 8000 }, token);
      await server.gql(InvalidateVmidCache, { nodeId }, token);
      sim.addGuest({ vmid: 8001 });
      await server.gql(VmidsTaken, { nodeId }, token);
      await expect.poll(() => sub.events.length).toBe(5);
      expect(sub.events.slice(1).map((e) => [e.kind, e.version])).toEqual([
        ['RESERVED', sync.version + 1],
        ['RELEASED', sync.version + 2],
        ['INVALIDATED', sync.version + 3],
        ['REFRESHED', sync.version + 4],
      ]);
      expect(sub.events[1]!.vmids).toEqual([8000]);
      // RESERVED says until when; no other kind carries an expiry.
      expect(sub.events[1]!.expiresAt).toBe(held.expiresAt);
      expect(sub.events.filter((e) => e.expiresAt !== null).length).toBe(1);
      expect(sub.events[4]!.vmids).toEqual(guestIds(sim));
      expect(sub.errors).toEqual([]);
    } finally {
      await sub.close();
    }
  });

  it("streams over SSE too, and all of the caller's nodes when nodeId is omitted", async () => {
    const second = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
    const sse = subscribeSse<Event>(server, token, VmidEvents);
    expect(await sse.contentType).toMatch(/text\/event-stream/);
    const seen = sse.events;
    const readUntil = (count: number) => sse.until(count);
    try {
      await readUntil(2);
      expect(seen.map((e) => e.kind)).toEqual(['SYNC', 'SYNC']);
      expect(seen.map((e) => e.nodeId).sort()).toEqual([nodeId, second].sort());
      // Both registrations reach one cluster: one VMID space, one version; a change through
      // either reaches the caller under each registration's id.
      expect(seen[0]!.version).toBe(seen[1]!.version);
      await server.gql(InvalidateVmidCache, { nodeId: second }, token);
      await readUntil(4);
      expect(seen.slice(2).map((e) => e.kind)).toEqual(['INVALIDATED', 'INVALIDATED']);
      expect(
        seen
          .slice(2)
          .map((e) => e.nodeId)
          .sort(),
      ).toEqual([nodeId, second].sort());
      expect(seen[2]!.version).toBe(seen[0]!.version + 1);
    } finally {
      await sse.close();
    }
  });

  it("ends a node's subscription with DELETED when the node is deleted; the one to every node tells of it and goes on", async () => {
    const owner = (await server.createUser()).token;
    // The doomed node is the only registration of its cluster: its VMID space goes with it.
    const standalone = await startTestSimulator({ guests: 2 });
    const create = async (of: Simulator) =>
      (await server.gql(CreateNode, { input: nodeInputFor(of) as never }, owner)).data!.createNode.id;
    const kept = await create(sim);
    const doomed = await create(standalone);
    const one = subscribe(server, owner, doomed);
    const all = subscribe(server, owner);
    try {
      await expect.poll(() => one.events.length).toBe(1);
      await expect.poll(() => all.events.length).toBe(2);
      expect((await server.gql(DeleteNode, { id: doomed }, owner)).data?.deleteNode).toBe(true);
      await expect.poll(() => one.completed).toBe(true);
      expect(one.events.map((e) => e.kind)).toEqual(['SYNC', 'DELETED']);
      expect(one.events[1]).toMatchObject({
        nodeId: doomed,
        version: one.events[0]!.version + 1,
        vmids: null,
        expiresAt: null,
      });
      expect(one.errors).toEqual([]);

      await expect.poll(() => all.events.length).toBe(3);
      expect(all.events[2]).toMatchObject({ kind: 'DELETED', nodeId: doomed });
      await server.gql(InvalidateVmidCache, { nodeId: kept }, owner);
      await expect.poll(() => all.events.length).toBe(4);
      expect(all.events[3]).toMatchObject({ kind: 'INVALIDATED', nodeId: kept });
      expect(all.completed).toBe(false);
    } finally {
      await one.close();
      await all.close();
      await standalone.stop();
    }
  });

  it("answers NOT_FOUND for another user's node on every VMID operation and subscription", async () => {
    const other = (await server.createUser()).token;
    for (const res of [
      await server.gql(VmidsTaken, { nodeId }, other),
      await server.gql(IsVmidTaken, { nodeId, vmid: 100 }, other),
      await server.gql(NextFreeVmid, { nodeId }, other),
      await server.gql(RefreshVmidCache, { nodeId }, other),
      await server.gql(InvalidateVmidCache, { nodeId }, other),
      await server.gql(ReserveVmid, { nodeId }, other),
      await server.gql(ReleaseVmid, { nodeId, vmid: 100 }, other),
    ]) {
      expect(code(res)).toBe('NOT_FOUND');
    }
    const sub = subscribe(server, other, nodeId);
    try {
      await expect.poll(() => sub.errors.length).toBe(1);
      expect(JSON.stringify(sub.errors[0])).toContain('NOT_FOUND');
      expect(sub.events).toEqual([]);
    } finally {
      await sub.close();
    }
  });
});

// The whole server on each kind of Redis deployment (REDIS_URL): events, kept snapshots, rate
// limits and reservations across instances.
describe.each([
  ['one Redis server', (): Record<string, string> => ({})],
  ['a Redis Cluster', (): Record<string, string> => ({ REDIS_URL: inject('redisClusterUrl') })],
  ['Sentinel', (): Record<string, string> => ({ REDIS_URL: inject('redisSentinelUrl') })],
] as const)('VMIDs across two instances of one deployment (%s)', (_where, redisEnv) => {
  let a: TestServer;
  let b: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;

  beforeAll(async () => {
    sim = await startTestSimulator({ guests: 50 });
    a = await startTestServer({ env: redisEnv() });
    b = await startTestServer({
      databaseUrl: a.databaseUrl,
      redisKeyPrefix: a.config.redisKeyPrefix,
      env: { ...redisEnv(), VMID_READ_CACHE_MS: '60000' },
    });
    token = (await a.createUser()).token;
    nodeId = (await a.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
  });
  afterAll(async () => {
    await b.stop();
    await a.stop();
    await sim.stop();
  });

  it('is ready', async () => {
    const ready = await fetch(`${b.url}/readyz`);
    expect(await ready.json()).toEqual({ ready: true, checks: { database: 'ok', redis: 'ok' } });
  });

  it('delivers a mutation on instance A to a subscriber on instance B, in order with versions', async () => {
    await a.gql(VmidsTaken, { nodeId }, token);
    const sub = subscribe(b, token, nodeId);
    try {
      await expect.poll(() => sub.events.length).toBe(1);
      const base = sub.events[0]!.version;
      for (let i = 0; i < 5; i++) await a.gql(ReserveVmid, { nodeId, vmid: 9000 + i }, token);
      await expect.poll(() => sub.events.length).toBe(6);
      expect(sub.events.slice(1).map((e) => [e.kind, e.version, e.vmids])).toEqual(
        [0, 1, 2, 3, 4].map((i) => ['RESERVED', base + 1 + i, [9000 + i]]),
      );
    } finally {
      await sub.close();
    }
  });

  it("shows A's reservations and releases in vmidsTaken on B once their events arrive, though B answers from memory", async ({
    skip,
  }) => {
    skip(!fastPathsOn, `${FAST_PATHS_OFF} (the local VMID snapshots)`);
    // B keeps snapshots for a minute (VMID_READ_CACHE_MS): only the events end them in time.
    const taken = async () => (await b.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken;
    const fromMemory = () => metricValue(b, 'pvegraph_vmid_snapshot_reads_total{source="memory"}');
    await expect.poll(async () => (await taken(), (await fromMemory()) > 0), { timeout: 5_000 }).toBe(true);
    const memoryReads = await fromMemory();
    await taken();
    expect(await fromMemory()).toBe(memoryReads + 1);
    for (let i = 0; i < 5; i++) {
      const vmid = 9100 + i;
      const before = await taken();
      expect(before.reserved).not.toContain(vmid);
      const reserved = await a.gql(ReserveVmid, { nodeId, vmid }, token);
      expect(reserved.errors).toBeUndefined();
      await expect.poll(async () => (await taken()).reserved, { timeout: 2_000 }).toContain(vmid);
      expect((await taken()).version).toBe(before.version + 1);
      expect((await a.gql(ReleaseVmid, { nodeId, vmid }, token)).data!.releaseVmid).toBe(true);
      await expect.poll(async () => (await taken()).reserved, { timeout: 2_000 }).not.toContain(vmid);
    }
  });

  it('never hands the same VMID to two of 200 concurrent reservations split over both instances', async () => {
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => (i % 2 ? a : b).gql(ReserveVmid, { nodeId, ttlSeconds: 60 }, token)),
    );
    for (const r of results) expect(r.errors, JSON.stringify(r.errors)).toBeUndefined();
    const vmids = results.map((r) => r.data!.reserveVmid.vmid);
    expect(new Set(vmids).size).toBe(200);
    const taken = new Set(guestIds(sim));
    expect(vmids.some((v) => taken.has(v))).toBe(false);
  });
});

describe('VMIDs while Redis is unreachable', () => {
  it('falls back to Proxmox for reads, refuses reservations with SERVICE_UNAVAILABLE, and recovers by itself', async () => {
    const url = new URL(TEST_REDIS_URL);
    const relay = await startTcpProxy(url.hostname, Number(url.port || 6379));
    const sim = await startTestSimulator();
    const server = await startTestServer({ env: { REDIS_URL: relay.url('redis') } });
    try {
      const { token } = await server.createUser();
      const nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
      expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken.fromCache).toBe(false);

      await relay.down();
      const read = await server.gql(VmidsTaken, { nodeId }, token);
      expect(read.errors).toBeUndefined();
      expect(read.data!.vmidsTaken).toMatchObject({ fromCache: false, taken: guestIds(sim), reserved: [] });
      expect(code(await server.gql(ReserveVmid, { nodeId }, token))).toBe('SERVICE_UNAVAILABLE');

      await relay.up();
      await expect
        .poll(async () => (await server.gql(ReserveVmid, { nodeId }, token)).errors, { timeout: 15_000 })
        .toBeUndefined();
      expect((await server.gql(VmidsTaken, { nodeId }, token)).data!.vmidsTaken.reserved).toHaveLength(1);
    } finally {
      await server.stop();
      await sim.stop();
      await relay.close();
    }
  });
});

describe('subscriptions per user', () => {
  it('answers RATE_LIMITED past MAX_SUBSCRIPTIONS_PER_USER and frees the slot when one ends', async () => {
    const sim = await startTestSimulator();
    const server = await startTestServer({ env: { MAX_SUBSCRIPTIONS_PER_USER: '2' } });
    const subs: Array<ReturnType<typeof subscribe>> = [];
    try {
      const { token } = await server.createUser();
      const nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
      subs.push(subscribe(server, token, nodeId), subscribe(server, token, nodeId));
      await expect.poll(() => subs.every((s) => s.events.length === 1)).toBe(true);
      const third = subscribe(server, token, nodeId);
      subs.push(third);
      await expect.poll(() => third.errors.length).toBe(1);
      expect(JSON.stringify(third.errors[0])).toContain('RATE_LIMITED');
      await subs[0]!.close();
      const fourth = subscribe(server, token, nodeId);
      subs.push(fourth);
      await expect.poll(() => fourth.events.length).toBe(1);
    } finally {
      for (const s of subs) await s.close();
      await server.stop();
      await sim.stop();
    }
  });

  // Yoga answers 406 to a subscription whose Accept allows no streaming format, after the
  // subscription has started: it must not keep a slot (nor the gauge) for ever.
  it('frees the slot of a subscription answered 406 (no streaming format accepted)', async () => {
    const sim = await startTestSimulator();
    const server = await startTestServer({ env: { MAX_SUBSCRIPTIONS_PER_USER: '1' } });
    const subs: Array<ReturnType<typeof subscribe>> = [];
    try {
      const { token } = await server.createUser();
      const nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
      for (const accept of ['application/json', 'application/graphql-response+json']) {
        const res = await fetch(server.graphqlUrl, {
          method: 'POST',
          headers: { 'content-type': 'application/json', accept, authorization: `Bearer ${token}` },
          body: JSON.stringify({ query: VmidEvents, variables: { nodeId } }),
        });
        expect(res.status).toBe(406);
      }
      await expect.poll(() => metricValue(server, 'pvegraph_active_subscriptions')).toBe(0);
      // The one slot is free: a real subscription gets its SYNC.
      const sub = subscribe(server, token, nodeId);
      subs.push(sub);
      await expect.poll(() => sub.events.length).toBe(1);
      expect(sub.errors).toEqual([]);
    } finally {
      for (const s of subs) await s.close();
      await server.stop();
      await sim.stop();
    }
  });

  // A subscription that fails (Redis gone when it starts) frees its one slot, not two: the cap
  // still holds afterwards (with 2 allowed and one open, one more opens, the next is refused).
  it('frees the slot of a failed subscription once', async () => {
    const url = new URL(TEST_REDIS_URL);
    const relay = await startTcpProxy(url.hostname, Number(url.port || 6379));
    const sim = await startTestSimulator();
    const server = await startTestServer({ env: { MAX_SUBSCRIPTIONS_PER_USER: '2', REDIS_URL: relay.url('redis') } });
    const subs: Array<ReturnType<typeof subscribe>> = [];
    let token = '';
    let nodeId = '';
    const open = () => subs[subs.push(subscribe(server, token, nodeId)) - 1]!;
    try {
      ({ token } = await server.createUser());
      nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
      const first = open();
      await expect.poll(() => first.events.length).toBe(1);

      await relay.down();
      const failed = open();
      await expect.poll(() => failed.errors.length).toBe(1);
      expect(JSON.stringify(failed.errors[0])).toContain('SERVICE_UNAVAILABLE');
      await relay.up();
      await expect
        .poll(async () => (await server.gql(ReserveVmid, { nodeId }, token)).errors, { timeout: 15_000 })
        .toBeUndefined();

      const second = open();
      await expect.poll(() => second.events.length, { timeout: 5_000 }).toBeGreaterThan(0);
      const third = open();
      await expect.poll(() => third.errors.length + third.events.length).toBeGreaterThan(0);
      expect(JSON.stringify(third.errors)).toContain('RATE_LIMITED');
      expect(first.errors).toEqual([]); // the first one held its slot throughout
    } finally {
      for (const s of subs) await s.close();
      await server.stop();
      await sim.stop();
      await relay.close();
    }
  });
});

describe('the first subscriptions of a freshly started instance', () => {
  it('all start, for many users at once (none fails while the pub/sub connection is still connecting)', async () => {
    const sim = await startTestSimulator();
    const seed = await startTestServer();
    const owners = await Promise.all(
      Array.from({ length: 20 }, async () => {
        const { token } = await seed.createUser();
        const nodeId = (await seed.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
        return { token, nodeId };
      }),
    );
    // Another instance of the deployment, started now: its pub/sub connection is brand new,
    // and each user's first subscription SUBSCRIBEs a channel of its own.
    const fresh = await startTestServer({ databaseUrl: seed.databaseUrl, redisKeyPrefix: seed.config.redisKeyPrefix });
    const subs = owners.flatMap(({ token, nodeId }) => [
      subscribe(fresh, token, nodeId),
      subscribe(fresh, token, nodeId),
    ]);
    try {
      await expect
        .poll(() => subs.every((s) => s.events.length === 1 || s.errors.length > 0), { timeout: 10_000 })
        .toBe(true);
      expect(subs.flatMap((s) => s.errors)).toEqual([]);
      expect(subs.every((s) => s.events[0]?.kind === 'SYNC')).toBe(true);
    } finally {
      for (const s of subs) await s.close();
      await fresh.stop();
      await seed.stop();
      await sim.stop();
    }
  });
});
