import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { CreateNode, MeWithNodes, Nodes, RegisterContainer } from './documents.js';

/** Resolver round trips stay constant as the number of nodes grows (no N+1). */
describe('database round trips per query', () => {
  let server: TestServer;
  let sim: Simulator;
  let statements: string[] = [];

  beforeAll(async () => {
    sim = await startTestSimulator();
    server = await startTestServer({ onQuery: (sql) => void statements.push(sql) });
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  // Every node reaches the one simulated cluster, where a VMID is registered once: each user
  // registers its own range.
  let nextVmid = 1000;
  async function userWithNodes(count: number): Promise<string> {
    const { token } = await server.createUser();
    for (let i = 0; i < count; i++) {
      const node = (await server.gql(CreateNode, { input: nodeInputFor(sim, { name: `n${i}` }) as never }, token)).data!
        .createNode;
      for (let k = 0; k < 2; k++) {
        const res = await server.gql(RegisterContainer, { input: { nodeId: node.id, vmid: nextVmid++ } }, token);
        expect(res.errors).toBeUndefined();
      }
    }
    return token;
  }

  /** Until no statement has been sent for 250 ms: what the last mutations left in the background is done. */
  async function quiet(): Promise<void> {
    for (let seen = -1; seen !== statements.length;) {
      seen = statements.length;
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  async function countStatements(run: () => Promise<unknown>): Promise<number> {
    await run(); // warm the token cache: authentication is not what this measures
    // Writes made after the setup's mutations (the VMID space's version, endpoint health) must
    // not count for the query.
    await quiet();
    statements = [];
    await run();
    return statements.filter((s) => !/^(BEGIN|COMMIT|ROLLBACK)/i.test(s.trim())).length;
  }

  it('nodes { containers } and me { nodes { containers { node } } } do not grow with the node count', async () => {
    const few = await userWithNodes(2);
    const many = await userWithNodes(12);

    const nodesFew = await countStatements(() => server.gql(Nodes, {}, few));
    const nodesMany = await countStatements(() => server.gql(Nodes, {}, many));
    expect(nodesMany).toBe(nodesFew);
    expect(nodesMany).toBeLessThanOrEqual(2);

    const meFew = await countStatements(() => server.gql(MeWithNodes, {}, few));
    const meMany = await countStatements(() => server.gql(MeWithNodes, {}, many));
    expect(meMany).toBe(meFew);

    const result = await server.gql(MeWithNodes, {}, many);
    expect(result.data!.me.nodes).toHaveLength(12);
    expect(
      result.data!.me.nodes.every((n) => n.containers.length === 2 && n.containers.every((c) => c.node.id === n.id)),
    ).toBe(true);
  });
});
