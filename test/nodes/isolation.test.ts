import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTestServer, type TestServer } from '../support/test-server.js';
import {
  CreateNode,
  DeleteNode,
  MeWithNodes,
  NodeById,
  Nodes,
  RegisterContainer,
  SetDefaultNode,
  TestNodeConnection,
  UnregisterContainer,
  UpdateNode,
} from './documents.js';

/**
 * User B tries every query and mutation on user A's ids: each answers NOT_FOUND, exactly as
 * an id that does not exist, and A's data is unchanged afterwards.
 */
describe("ownership: another user's ids answer NOT_FOUND", () => {
  let server: TestServer;
  let sim: Simulator;
  let alice: { token: string };
  let bob: { token: string };
  let aliceNode: { id: string };
  let aliceContainer: { id: string };
  const missing = '00000000-0000-4000-8000-000000000000';

  beforeAll(async () => {
    [server, sim] = await Promise.all([startTestServer(), startTestSimulator()]);
    alice = await server.createUser('alice');
    bob = await server.createUser('bob');
    aliceNode = (
      await server.gql(CreateNode, { input: nodeInputFor(sim, { name: 'alice-node' }) as never }, alice.token)
    ).data!.createNode;
    aliceContainer = (await server.gql(RegisterContainer, { input: { nodeId: aliceNode.id, vmid: 777 } }, alice.token))
      .data!.registerContainer;
    // Bob has a node of his own, so "no nodes at all" is not what makes his calls fail.
    await server.gql(CreateNode, { input: nodeInputFor(sim, { name: 'bob-node' }) as never }, bob.token);
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  const attempts = (id: string, containerId: string) => ({
    node: () => server.gql(NodeById, { id }, bob.token),
    updateNode: () => server.gql(UpdateNode, { input: { id, name: 'stolen' } }, bob.token),
    deleteNode: () => server.gql(DeleteNode, { id }, bob.token),
    setDefaultNode: () => server.gql(SetDefaultNode, { id }, bob.token),
    testNodeConnection: () => server.gql(TestNodeConnection, { id }, bob.token),
    registerContainer: () => server.gql(RegisterContainer, { input: { nodeId: id, vmid: 778 } }, bob.token),
    unregisterContainer: () => server.gql(UnregisterContainer, { id: containerId }, bob.token),
  });

  it.each(Object.keys(attempts('', '')))('%s on a foreign id answers like a missing id', async (operation) => {
    const foreign = await attempts(aliceNode.id, aliceContainer.id)[operation as keyof ReturnType<typeof attempts>]();
    const absent = await attempts(missing, missing)[operation as keyof ReturnType<typeof attempts>]();
    expect(foreign.errors?.[0]?.extensions?.code).toBe('NOT_FOUND');
    expect(absent.errors?.[0]?.extensions?.code).toBe('NOT_FOUND');
    // Same message shape: nothing tells "exists but not yours" from "does not exist".
    expect(foreign.errors![0]!.message.replace(aliceNode.id, 'ID').replace(aliceContainer.id, 'ID')).toBe(
      absent.errors![0]!.message.replace(missing, 'ID'),
    );
    expect(foreign.data?.[operation as never] ?? null).toBeNull();
  });

  it("lists only the caller's own nodes and containers", async () => {
    const bobsView = await server.gql(Nodes, {}, bob.token);
    expect(bobsView.data!.nodes.map((n) => n.name)).toEqual(['bob-node']);
    const bobMe = await server.gql(MeWithNodes, {}, bob.token);
    expect(JSON.stringify(bobMe.data)).not.toContain(aliceNode.id);
  });

  it("leaves the owner's data untouched", async () => {
    const mine = await server.gql(NodeById, { id: aliceNode.id }, alice.token);
    expect(mine.data?.node).toMatchObject({
      id: aliceNode.id,
      name: 'alice-node',
      isDefault: true,
      containers: [{ id: aliceContainer.id, vmid: 777 }],
    });
  });

  it('answers NOT_FOUND for ids that are not even UUIDs', async () => {
    for (const run of Object.values(attempts('42; DROP TABLE users', 'nope'))) {
      expect((await run()).errors?.[0]?.extensions?.code).toBe('NOT_FOUND');
    }
  });
});
