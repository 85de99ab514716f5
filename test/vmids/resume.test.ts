import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateNode } from '../nodes/documents.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { subscribeSse, subscribeWs } from '../support/subscriptions.js';
import { startTestServer, type TestServer, uniqueRedisPrefix } from '../support/test-server.js';
import { InvalidateVmidCache, ReleaseVmid, ReserveVmid, VmidsTaken } from './documents.js';

interface Event {
  nodeId: string;
  kind: string;
  version: number;
  vmids: number[] | null;
  added: number[];
  removed: number[];
}

const RESUME =
  'subscription ($nodeId: ID, $afterVersion: Int) { vmidEvents(nodeId: $nodeId, afterVersion: $afterVersion) { nodeId kind version vmids added removed } }';

/** A graphql-ws subscription on `server`, collecting events and errors. */
const subscribe = (server: TestServer, token: string, variables: Record<string, unknown>) =>
  subscribeWs<Event>(server, token, RESUME, variables);

/** A dashboard that lost its connection resumes through another instance and misses nothing. */
describe('resuming vmidEvents after a version', () => {
  let a: TestServer;
  let b: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;

  beforeAll(async () => {
    const prefix = uniqueRedisPrefix();
    a = await startTestServer({ redisKeyPrefix: prefix });
    [b, sim] = await Promise.all([
      startTestServer({ databaseUrl: a.databaseUrl, redisKeyPrefix: prefix }),
      startTestSimulator({ guests: 4 }),
    ]);
    token = (await a.createUser()).token;
    nodeId = (await a.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
    await a.gql(VmidsTaken, { nodeId }, token);
  });
  afterAll(async () => {
    await Promise.all([a.stop(), b.stop(), sim.stop()]);
  });

  it('replays what was missed in order, without SYNC, through another instance, then goes on live', async () => {
    const first = subscribe(a, token, { nodeId });
    await expect.poll(() => first.events.length).toBe(1);
    const seen = first.events[0]!.version;
    await first.close();

    // Missed while away: a reservation, its release, a guest created behind pvegraph's back.
    await a.gql(ReserveVmid, { nodeId, vmid: 3000, ttlSeconds: 60 }, token);
    await a.gql(ReleaseVmid, { nodeId, vmid: 3000 }, token);
    sim.addGuest({ vmid: 3001 });
    await a.gql(InvalidateVmidCache, { nodeId }, token);
    await a.gql(VmidsTaken, { nodeId }, token);

    const resumed = subscribe(b, token, { nodeId, afterVersion: seen });
    try {
      await expect.poll(() => resumed.events.length).toBe(4);
      expect(resumed.events.map((e) => [e.kind, e.version])).toEqual([
        ['RESERVED', seen + 1],
        ['RELEASED', seen + 2],
        ['INVALIDATED', seen + 3],
        ['REFRESHED', seen + 4],
      ]);
      expect(resumed.events[3]).toMatchObject({ nodeId, added: [3001], removed: [] });
      expect(resumed.events[3]!.vmids).toContain(3001);
      await a.gql(ReserveVmid, { nodeId, vmid: 3002, ttlSeconds: 60 }, token);
      await expect.poll(() => resumed.events.length).toBe(5);
      expect(resumed.events[4]).toMatchObject({ kind: 'RESERVED', version: seen + 5, vmids: [3002] });
      expect(resumed.errors).toEqual([]);
    } finally {
      await resumed.close();
      await a.gql(ReleaseVmid, { nodeId, vmid: 3002 }, token);
    }
  });

  it('starts with SYNC when asked to resume from a version the cluster never reached', async () => {
    const ahead = subscribe(b, token, { nodeId, afterVersion: 1_000_000 });
    try {
      await expect.poll(() => ahead.events.length).toBe(1);
      expect(ahead.events[0]!.kind).toBe('SYNC');
    } finally {
      await ahead.close();
    }
  });

  it('refuses afterVersion without a nodeId (BAD_USER_INPUT)', async () => {
    const all = subscribe(a, token, { afterVersion: 1 });
    try {
      await expect.poll(() => all.errors.length).toBe(1);
      expect(JSON.stringify(all.errors[0])).toContain('BAD_USER_INPUT');
    } finally {
      await all.close();
    }
  });
});

/** The same over SSE on an embedded server (events kept in memory). */
describe('resuming vmidEvents over SSE, embedded', () => {
  let server: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;

  beforeAll(async () => {
    [server, sim] = await Promise.all([startTestServer({ redis: false }), startTestSimulator({ guests: 2 })]);
    token = (await server.createUser()).token;
    nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  /** Reads SSE events of one subscription until `count` arrived. */
  async function sse(variables: Record<string, unknown>, count: number): Promise<Event[]> {
    const sub = subscribeSse<Event>(server, token, RESUME, variables);
    try {
      return await sub.until(count);
    } finally {
      await sub.close();
    }
  }

  it('replays the missed events in order, then the live ones', async () => {
    const [sync] = await sse({ nodeId }, 1);
    await server.gql(VmidsTaken, { nodeId }, token);
    await server.gql(ReserveVmid, { nodeId, vmid: 3100, ttlSeconds: 60 }, token);
    const resumed = sse({ nodeId, afterVersion: sync!.version }, 3);
    setTimeout(() => void server.gql(ReleaseVmid, { nodeId, vmid: 3100 }, token), 300);
    const got = await resumed;
    expect(got.map((e) => [e.kind, e.version])).toEqual([
      ['REFRESHED', sync!.version + 1],
      ['RESERVED', sync!.version + 2],
      ['RELEASED', sync!.version + 3],
    ]);
    expect(got[0]!.added).toEqual([100, 101]);
  });
});
