import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { InvalidateVmidCache, RefreshVmidCache, VmidsTaken } from '../vmids/documents.js';
import { CreateNode, NodeEndpoints, Nodes, TestNodeConnection, UpdateNode } from './documents.js';

let server: TestServer;
let sim: Simulator;

beforeAll(async () => {
  [server, sim] = await Promise.all([
    startTestServer(),
    startTestSimulator({ clusterName: 'lab', nodes: 3, memberEndpoints: true }),
  ]);
});
afterAll(async () => {
  await Promise.all([server.stop(), sim.stop()]);
});
afterEach(async () => {
  sim.clearFaults();
  for (const m of sim.members) await sim.setMemberReachable(m.name, true);
});

type Res = { errors?: Array<{ message: string; extensions?: Record<string, unknown> }> };
const code = (res: Res) => res.errors?.[0]?.extensions?.code;
const fields = (res: Res) => res.errors?.[0]?.extensions?.fields as Record<string, string> | undefined;

/** sim.members[i] as an EndpointInput, pinned to its own certificate unless told otherwise. */
const endpoint = (i: number, pin?: string | null) => {
  const m = sim.members[i]!;
  return { host: m.host, port: m.port, tlsFingerprint: pin === undefined ? m.fingerprint : pin };
};
const member = (i: number) => sim.members[i]!;

async function createNode(token: string, fallbackEndpoints: unknown[], overrides: Record<string, unknown> = {}) {
  const res = await server.gql(
    CreateNode,
    { input: nodeInputFor(sim, { fallbackEndpoints, ...overrides }) as never },
    token,
  );
  expect(res.errors, JSON.stringify(res.errors)).toBeUndefined();
  return res.data!.createNode;
}

async function endpointsOf(id: string, token: string) {
  const res = await server.gql(NodeEndpoints, { id }, token);
  expect(res.errors, JSON.stringify(res.errors)).toBeUndefined();
  return res.data!.node!.endpoints;
}

describe('createNode with fallbackEndpoints', () => {
  it('stores them in order; endpoints lists the primary first, each with its own pin and health', async () => {
    const { token } = await server.createUser();
    const node = await createNode(token, [endpoint(1), endpoint(2)]);
    expect(node.endpoints.map((e) => [e.host, e.port, e.tlsFingerprint])).toEqual([
      [sim.host, sim.port, sim.fingerprint],
      [member(1).host, member(1).port, member(1).fingerprint],
      [member(2).host, member(2).port, member(2).fingerprint],
    ]);
    // The test went through the primary; the fallbacks were each asked for /version.
    for (const e of node.endpoints) {
      expect(e.lastError).toBeNull();
      expect(e.lastOkAt).not.toBeNull();
    }
    expect(await endpointsOf(node.id, token)).toEqual(node.endpoints);
    // Without fallbacks: just the primary.
    const plain = await createNode(token, [], { name: 'plain' });
    expect(plain.endpoints).toHaveLength(1);
  });

  it('primary unreachable at registration: the test fails over, and the primary shows why', async () => {
    const { token } = await server.createUser();
    await sim.setMemberReachable(member(0).name, false);
    const node = await createNode(token, [endpoint(2), endpoint(1)]);
    expect(node.clusterName).toBe('lab');
    expect(node.endpoints[0]!.lastError).toMatch(/connection refused/);
    expect(node.endpoints[0]!.lastOkAt).toBeNull();
    expect(node.endpoints[1]!.lastOkAt).not.toBeNull();
  });

  it('a fallback with a wrong pin is refused at registration, naming it; nothing is stored', async () => {
    const { token } = await server.createUser();
    const res = await server.gql(
      CreateNode,
      { input: nodeInputFor(sim, { fallbackEndpoints: [endpoint(1), endpoint(2, member(1).fingerprint)] }) as never },
      token,
    );
    expect(code(res)).toBe('PROXMOX_TLS_FINGERPRINT_MISMATCH');
    expect(res.errors![0]!.extensions).toMatchObject({
      field: 'input.fallbackEndpoints.1',
      fingerprint: member(2).fingerprint,
    });
    expect(res.errors![0]!.message).toContain(`:${member(2).port}`);
    expect((await server.gql(Nodes, {}, token)).data!.nodes).toEqual([]);
  });

  it('a fallback unreachable at registration is accepted, with its lastError', async () => {
    const { token } = await server.createUser();
    await sim.setMemberReachable(member(2).name, false);
    const node = await createNode(token, [endpoint(1), endpoint(2)]);
    expect(node.endpoints[2]).toMatchObject({ lastOkAt: null, lastError: expect.stringMatching(/connection refused/) });
  });

  it('validation: duplicates, too many, bad hosts/ports/pins → BAD_USER_INPUT naming the path; nothing stored', async () => {
    const { token } = await server.createUser();
    const create = (fallbackEndpoints: unknown[]) =>
      server.gql(CreateNode, { input: nodeInputFor(sim, { fallbackEndpoints }) as never }, token);

    const dupPrimary = await create([endpoint(1), { host: sim.host.toUpperCase(), port: sim.port }]);
    expect(code(dupPrimary)).toBe('BAD_USER_INPUT');
    expect(fields(dupPrimary)).toEqual({ 'input.fallbackEndpoints.1.host': expect.stringMatching(/primary/) });

    const dupEach = await create([endpoint(1), endpoint(2), { ...endpoint(1), tlsFingerprint: null }]);
    expect(fields(dupEach)).toEqual({
      'input.fallbackEndpoints.2.host': expect.stringMatching(/input\.fallbackEndpoints\.0/),
    });

    const tooMany = await create(Array.from({ length: 9 }, (_, i) => ({ host: `pve${i}.example.org` })));
    expect(code(tooMany)).toBe('BAD_USER_INPUT');
    expect(Object.keys(fields(tooMany)!)).toEqual(['input.fallbackEndpoints']);

    const bad = await create([{ host: 'https://x/', port: 70000, tlsFingerprint: 'nope' }]);
    expect(code(bad)).toBe('BAD_USER_INPUT');
    expect(Object.keys(fields(bad)!).sort()).toEqual([
      'input.fallbackEndpoints.0.host',
      'input.fallbackEndpoints.0.port',
      'input.fallbackEndpoints.0.tlsFingerprint',
    ]);

    const metadata = await create([{ host: '169.254.169.254' }]);
    expect(code(metadata)).toBe('HOST_NOT_ALLOWED');

    expect((await server.gql(Nodes, {}, token)).data!.nodes).toEqual([]);
  });
});

describe('calls fail over', () => {
  it('primary unreachable → vmidsTaken and refreshVmidCache answer through a fallback; endpoints shows both sides', async () => {
    const { token } = await server.createUser();
    const node = await createNode(token, [endpoint(1), endpoint(2)]);
    await sim.setMemberReachable(member(0).name, false);

    const refreshed = await server.gql(RefreshVmidCache, { nodeId: node.id }, token);
    expect(refreshed.errors, JSON.stringify(refreshed.errors)).toBeUndefined();
    expect(refreshed.data!.refreshVmidCache.taken).toEqual(sim.guests().map((g) => g.vmid));

    expect((await server.gql(InvalidateVmidCache, { nodeId: node.id }, token)).errors).toBeUndefined();
    const taken = await server.gql(VmidsTaken, { nodeId: node.id }, token);
    expect(taken.errors, JSON.stringify(taken.errors)).toBeUndefined();
    expect(taken.data!.vmidsTaken.fromCache).toBe(false);
    expect(taken.data!.vmidsTaken.taken).toEqual(sim.guests().map((g) => g.vmid));

    const createdOkAt = node.endpoints[1]!.lastOkAt!;
    await vi.waitFor(
      async () => {
        const [primary, first, second] = await endpointsOf(node.id, token);
        expect(primary!.lastError).toMatch(/connection refused|closed unexpectedly/);
        expect(first!.lastError).toBeNull();
        expect(Date.parse(first!.lastOkAt!)).toBeGreaterThan(Date.parse(createdOkAt));
        // Never needed: untouched since registration.
        expect(second!.lastOkAt).toBe(node.endpoints[2]!.lastOkAt);
      },
      { timeout: 5_000, interval: 100 },
    );

    const test = await server.gql(TestNodeConnection, { id: node.id }, token);
    expect(test.data!.testNodeConnection).toMatchObject({ ok: true, clusterName: 'lab', errorCode: null });
  });

  it('a stored fallback whose pin no longer matches answers the TLS error instead of passing to the next one', async () => {
    const { token } = await server.createUser();
    // Registered while that member was down (accepted, unverified); its pin is wrong.
    await sim.setMemberReachable(member(1).name, false);
    const node = await createNode(token, [endpoint(1, member(2).fingerprint), endpoint(2)]);
    await sim.setMemberReachable(member(1).name, true);
    await sim.setMemberReachable(member(0).name, false);

    sim.stats.reset();
    const res = await server.gql(RefreshVmidCache, { nodeId: node.id }, token);
    expect(code(res)).toBe('PROXMOX_TLS_FINGERPRINT_MISMATCH');
    expect(res.errors![0]!.extensions).toMatchObject({ fingerprint: member(1).fingerprint, endpointIndex: 1 });
    expect(sim.stats.total).toBe(0); // the third endpoint, which would have answered, was not asked
    await vi.waitFor(async () => expect((await endpointsOf(node.id, token))[1]!.lastError).toMatch(/fingerprint/), {
      timeout: 5_000,
      interval: 100,
    });
  });

  it('401 from the primary answers at once: no fallback is asked', async () => {
    const { token } = await server.createUser();
    const node = await createNode(token, [endpoint(2), endpoint(1)]);
    sim.stats.reset();
    sim.addFault({ kind: 'status', status: 401, pathPrefix: '/cluster/resources', times: 1 });
    const res = await server.gql(RefreshVmidCache, { nodeId: node.id }, token);
    expect(code(res)).toBe('PROXMOX_AUTH_FAILED');
    expect(sim.stats.count('/cluster/resources')).toBe(1);
    // The fault is used up: the next call works (through the primary).
    expect((await server.gql(RefreshVmidCache, { nodeId: node.id }, token)).errors).toBeUndefined();
  });

  it('5xx from the primary → the next endpoint answers', async () => {
    const { token } = await server.createUser();
    const node = await createNode(token, [endpoint(1)]);
    sim.stats.reset();
    sim.addFault({ kind: 'status', status: 503, pathPrefix: '/cluster/resources', times: 1 });
    const res = await server.gql(RefreshVmidCache, { nodeId: node.id }, token);
    expect(res.errors, JSON.stringify(res.errors)).toBeUndefined();
    expect(sim.stats.count('/cluster/resources')).toBe(2);
  });
});

describe('updateNode fallbackEndpoints', () => {
  it('omitted keeps, a list replaces (new endpoints need the secret), [] removes', async () => {
    const { token } = await server.createUser();
    const node = await createNode(token, [endpoint(1)]);
    const update = (input: Record<string, unknown>) =>
      server.gql(UpdateNode, { input: { id: node.id, ...input } as never }, token);
    const hosts = (res: Awaited<ReturnType<typeof update>>) => res.data!.updateNode.endpoints.map((e) => e.port);

    // Omitted: kept (a rename does not touch them).
    const renamed = await update({ name: 'renamed' });
    expect(renamed.errors).toBeUndefined();
    expect(hosts(renamed)).toEqual([sim.port, member(1).port]);

    // A new endpoint without the secret: refused, nothing changes.
    const noSecret = await update({ fallbackEndpoints: [endpoint(1), endpoint(2)] });
    expect(code(noSecret)).toBe('BAD_USER_INPUT');
    expect(fields(noSecret)).toEqual({ 'input.tokenSecret': expect.stringMatching(/required/) });
    // A stored endpoint with another pin is new trust: the same.
    const repinned = await update({ fallbackEndpoints: [endpoint(1, null)] });
    expect(fields(repinned)).toEqual({ 'input.tokenSecret': expect.stringMatching(/required/) });
    expect((await endpointsOf(node.id, token)).map((e) => e.port)).toEqual([sim.port, member(1).port]);

    // With the secret: replaced (and every new one proven).
    const replaced = await update({ fallbackEndpoints: [endpoint(2), endpoint(1)], tokenSecret: sim.token.secret });
    expect(replaced.errors, JSON.stringify(replaced.errors)).toBeUndefined();
    expect(hosts(replaced)).toEqual([sim.port, member(2).port, member(1).port]);
    expect(replaced.data!.updateNode.endpoints[1]!.lastOkAt).not.toBeNull();

    // Moving the primary onto a kept fallback would list one endpoint twice.
    const onto = await update({
      port: member(1).port,
      tlsFingerprint: member(1).fingerprint,
      tokenSecret: sim.token.secret,
    });
    expect(fields(onto)).toEqual({ 'input.host': expect.stringMatching(/fallback/) });

    // Reordering and dropping stored endpoints needs no secret.
    const reordered = await update({ fallbackEndpoints: [endpoint(1)] });
    expect(reordered.errors, JSON.stringify(reordered.errors)).toBeUndefined();
    expect(hosts(reordered)).toEqual([sim.port, member(1).port]);

    // A duplicate of the (new) primary is refused.
    const dup = await update({ fallbackEndpoints: [endpoint(0)] });
    expect(fields(dup)).toEqual({ 'input.fallbackEndpoints.0.host': expect.stringMatching(/primary/) });

    // []: all removed.
    const removed = await update({ fallbackEndpoints: [] });
    expect(removed.errors).toBeUndefined();
    expect(hosts(removed)).toEqual([sim.port]);

    // null: kept.
    const kept = await update({ fallbackEndpoints: null, name: 'again' });
    expect(hosts(kept)).toEqual([sim.port]);
  });

  it("another user's node is NOT_FOUND, endpoints and all", async () => {
    const owner = await server.createUser();
    const other = await server.createUser();
    const node = await createNode(owner.token, [endpoint(1)]);
    expect(code(await server.gql(NodeEndpoints, { id: node.id }, other.token))).toBe('NOT_FOUND');
    const res = await server.gql(
      UpdateNode,
      { input: { id: node.id, fallbackEndpoints: [], tokenSecret: sim.token.secret } as never },
      other.token,
    );
    expect(code(res)).toBe('NOT_FOUND');
    expect((await endpointsOf(node.id, owner.token)).map((e) => e.port)).toEqual([sim.port, member(1).port]);
  });
});
