import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateNode, TestNodeConnection } from '../nodes/documents.js';
import { InvalidateVmidCache, VmidsTaken } from '../vmids/documents.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTestServer, type TestServer } from '../support/test-server.js';

describe('per-user rate limit on Proxmox operations, shared across instances', () => {
  let a: TestServer;
  let b: TestServer;
  let sim: Simulator;

  beforeAll(async () => {
    sim = await startTestSimulator();
    const env = { RATE_LIMIT_PROXMOX_PER_MIN: '4' };
    a = await startTestServer({ env });
    // Instance B: same database, same Redis key prefix — one deployment.
    b = await startTestServer({ env, databaseUrl: a.databaseUrl, redisKeyPrefix: a.config.redisKeyPrefix });
  });
  afterAll(async () => {
    await b.stop();
    await a.stop();
    await sim.stop();
  });

  it('answers RATE_LIMITED once the budget is spent, whichever instance is asked', async () => {
    const alice = await a.createUser();
    const node = (await a.gql(CreateNode, { input: nodeInputFor(sim) as never }, alice.token)).data!.createNode; // 1
    expect((await b.gql(TestNodeConnection, { id: node.id }, alice.token)).data?.testNodeConnection.ok).toBe(true); // 2
    expect((await a.gql(TestNodeConnection, { id: node.id }, alice.token)).data?.testNodeConnection.ok).toBe(true); // 3
    expect((await b.gql(TestNodeConnection, { id: node.id }, alice.token)).data?.testNodeConnection.ok).toBe(true); // 4

    const versionCalls = sim.stats.count('/version');
    const limited = await a.gql(TestNodeConnection, { id: node.id }, alice.token);
    expect(limited.errors?.[0]?.extensions?.code).toBe('RATE_LIMITED');
    expect(limited.errors?.[0]?.extensions?.retryAfterSeconds).toBeGreaterThan(0);
    expect(
      (await b.gql(CreateNode, { input: nodeInputFor(sim) as never }, alice.token)).errors?.[0]?.extensions?.code,
    ).toBe('RATE_LIMITED');
    // Cache fills reach Proxmox too: invalidate-and-read cannot bypass the budget.
    const resourceCalls = sim.stats.count('/cluster/resources');
    await a.gql(InvalidateVmidCache, { nodeId: node.id }, alice.token);
    expect((await b.gql(VmidsTaken, { nodeId: node.id }, alice.token)).errors?.[0]?.extensions?.code).toBe(
      'RATE_LIMITED',
    );
    // A limited call never reaches Proxmox.
    expect(sim.stats.count('/version')).toBe(versionCalls);
    expect(sim.stats.count('/cluster/resources')).toBe(resourceCalls);

    // Another user has a budget of their own.
    const bob = await b.createUser();
    expect((await b.gql(CreateNode, { input: nodeInputFor(sim) as never }, bob.token)).errors).toBeUndefined();
  });
});
