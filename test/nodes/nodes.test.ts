import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import {
  CreateNode,
  DefaultNode,
  DeleteNode,
  NodeById,
  Nodes,
  RegisterContainer,
  SetDefaultNode,
  TestNodeConnection,
  UnregisterContainer,
  UpdateNode,
} from './documents.js';

let server: TestServer;
let sim: Simulator;
let clusterSim: Simulator;

beforeAll(async () => {
  [server, sim, clusterSim] = await Promise.all([
    startTestServer(),
    startTestSimulator(),
    startTestSimulator({ clusterName: 'lab', nodes: 3 }),
  ]);
});
afterAll(async () => {
  await Promise.all([server.stop(), sim.stop(), clusterSim.stop()]);
});

const code = (res: { errors?: Array<{ extensions?: Record<string, unknown> }> }) => res.errors?.[0]?.extensions?.code;

async function newUser() {
  return server.createUser();
}

async function createNode(token: string, overrides: Record<string, unknown> = {}, target = sim) {
  const res = await server.gql(CreateNode, { input: nodeInputFor(target, overrides) as never }, token);
  expect(res.errors, JSON.stringify(res.errors)).toBeUndefined();
  return res.data!.createNode;
}

describe('createNode', () => {
  it('tests the connection, keeps what it learned, and makes the first node the default', async () => {
    const { token } = await newUser();
    const node = await createNode(token, { name: 'lab', sshPassword: 'hunter2' }, clusterSim);
    expect(node).toMatchObject({
      name: 'lab',
      host: '127.0.0.1',
      port: clusterSim.port,
      tokenId: clusterSim.token.id,
      isDefault: true,
      hasSshPassword: true,
      tlsFingerprint: clusterSim.fingerprint,
      allowInsecureTls: false,
      pveVersion: '8.4.1',
      clusterName: 'lab',
      pveNodeNames: ['pve1', 'pve2', 'pve3'],
      presentedFingerprint: clusterSim.fingerprint,
    });
    expect(node.lastTestedAt).not.toBeNull();

    const second = await createNode(token, { name: 'standalone', tlsFingerprint: undefined, allowInsecureTls: true });
    expect(second).toMatchObject({
      isDefault: false,
      clusterName: null,
      pveNodeNames: ['pve'],
      tlsFingerprint: null,
      allowInsecureTls: true,
    });
    expect((await server.gql(DefaultNode, {}, token)).data?.defaultNode?.id).toBe(node.id);
  });

  it('accepts a fingerprint in any case, with or without colons, and stores one form', async () => {
    const { token } = await newUser();
    const bare = sim.fingerprint.replace(/:/g, '').toLowerCase();
    expect((await createNode(token, { tlsFingerprint: bare })).tlsFingerprint).toBe(sim.fingerprint);
  });

  it('answers BAD_USER_INPUT naming every failing field, and stores nothing', async () => {
    const { token } = await newUser();
    const res = await server.gql(
      CreateNode,
      {
        input: nodeInputFor(sim, {
          name: '',
          host: 'https://pve.example.com:8006/',
          port: 70000,
          tokenId: 'root@pam',
          tokenSecret: 'has space',
          tlsFingerprint: 'AB:CD',
        }) as never,
      },
      token,
    );
    expect(code(res)).toBe('BAD_USER_INPUT');
    const fields = res.errors![0]!.extensions!.fields as Record<string, string>;
    expect(Object.keys(fields).sort()).toEqual(
      ['input.host', 'input.name', 'input.port', 'input.tlsFingerprint', 'input.tokenId', 'input.tokenSecret'].sort(),
    );
    expect(fields['input.tokenId']).toMatch(/USER@REALM!TOKENID/);
    // The message alone says what to fix: every field with its reason.
    const message = res.errors![0]!.message;
    for (const [field, reason] of Object.entries(fields))
      expect(message).toContain(`${field}: ${reason.replace(/\.$/, '')}`);
    expect(message).not.toContain('has space');
    expect((await server.gql(Nodes, {}, token)).data?.nodes).toEqual([]);
  });

  it.each([
    ['a wrong token secret', () => ({ tokenSecret: 'wrong-secret' }), 'PROXMOX_AUTH_FAILED'],
    ['an unknown token id', () => ({ tokenId: 'nobody@pve!x' }), 'PROXMOX_AUTH_FAILED'],
    ['a port nothing listens on', () => ({ port: 1 }), 'PROXMOX_UNREACHABLE'],
    ['an unpinned self-signed certificate', () => ({ tlsFingerprint: null }), 'PROXMOX_TLS_UNTRUSTED'],
    [
      'a pin of another certificate',
      () => ({ tlsFingerprint: 'AA:'.repeat(31) + 'AA' }),
      'PROXMOX_TLS_FINGERPRINT_MISMATCH',
    ],
  ])('refuses %s with the Proxmox code and stores nothing', async (_what, overrides, expected) => {
    const { token } = await newUser();
    const res = await server.gql(CreateNode, { input: nodeInputFor(sim, overrides()) as never }, token);
    expect(code(res)).toBe(expected);
    expect(res.data ?? null).toBeNull();
    if (expected.startsWith('PROXMOX_TLS')) expect(res.errors![0]!.extensions!.fingerprint).toBe(sim.fingerprint);
    expect((await server.gql(Nodes, {}, token)).data?.nodes).toEqual([]);
  });

  it('answers CONFLICT for a name the user already has; another user may use it', async () => {
    const a = await newUser();
    const b = await newUser();
    await createNode(a.token, { name: 'dup' });
    const again = await server.gql(CreateNode, { input: nodeInputFor(sim, { name: 'dup' }) as never }, a.token);
    expect(code(again)).toBe('CONFLICT');
    expect((await createNode(b.token, { name: 'dup' })).name).toBe('dup');
  });

  it('ends with exactly one default after 20 concurrent creates for a new user', async () => {
    const { token } = await newUser();
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        server.gql(CreateNode, { input: nodeInputFor(sim, { name: `n${i}` }) as never }, token),
      ),
    );
    for (const r of results) expect(r.errors, JSON.stringify(r.errors)).toBeUndefined();
    const nodes = (await server.gql(Nodes, {}, token)).data!.nodes;
    expect(nodes).toHaveLength(20);
    expect(nodes.filter((n) => n.isDefault)).toHaveLength(1);
  });
});

describe('refusing node hosts by policy', () => {
  let strict: TestServer;
  beforeAll(async () => {
    strict = await startTestServer({ env: { ALLOW_LOOPBACK_NODE_HOSTS: 'false' } });
  });
  afterAll(() => strict.stop());

  it.each(['127.0.0.1', 'localhost', '169.254.169.254', '::ffff:127.0.0.1'])(
    'refuses %s with HOST_NOT_ALLOWED',
    async (host) => {
      const { token } = await strict.createUser();
      const before = sim.stats.total;
      const res = await strict.gql(CreateNode, { input: nodeInputFor(sim, { host }) as never }, token);
      expect(code(res)).toBe('HOST_NOT_ALLOWED');
      expect(sim.stats.total).toBe(before);
    },
  );
});

describe('setDefaultNode and deleteNode', () => {
  it('switches the default so that exactly one node is default', async () => {
    const { token } = await newUser();
    const first = await createNode(token);
    const second = await createNode(token);
    const res = await server.gql(SetDefaultNode, { id: second.id }, token);
    expect(res.data?.setDefaultNode).toEqual({ id: second.id, isDefault: true });
    const nodes = (await server.gql(Nodes, {}, token)).data!.nodes;
    expect(nodes.map((n) => [n.id, n.isDefault])).toEqual([
      [first.id, false],
      [second.id, true],
    ]);
  });

  it('keeps one default under concurrent switches', async () => {
    const { token } = await newUser();
    const nodes = [await createNode(token), await createNode(token), await createNode(token)];
    await Promise.all(
      nodes.flatMap((n) => [
        server.gql(SetDefaultNode, { id: n.id }, token),
        server.gql(SetDefaultNode, { id: n.id }, token),
      ]),
    );
    const after = (await server.gql(Nodes, {}, token)).data!.nodes;
    expect(after.filter((n) => n.isDefault)).toHaveLength(1);
  });

  it('promotes the oldest remaining node when the default is deleted', async () => {
    const { token } = await newUser();
    const a = await createNode(token);
    const b = await createNode(token);
    const c = await createNode(token);
    await server.gql(SetDefaultNode, { id: c.id }, token);
    expect((await server.gql(DeleteNode, { id: c.id }, token)).data?.deleteNode).toBe(true);
    expect((await server.gql(DefaultNode, {}, token)).data?.defaultNode?.id).toBe(a.id);
    // Deleting a non-default node leaves the default alone.
    await server.gql(DeleteNode, { id: b.id }, token);
    expect((await server.gql(DefaultNode, {}, token)).data?.defaultNode?.id).toBe(a.id);
    await server.gql(DeleteNode, { id: a.id }, token);
    expect((await server.gql(DefaultNode, {}, token)).data?.defaultNode).toBeNull();
  });

  it('refuses to delete a node with registered containers (FAILED_PRECONDITION), then allows it', async () => {
    const { token } = await newUser();
    const node = await createNode(token);
    const reg = await server.gql(
      RegisterContainer,
      { input: { nodeId: node.id, vmid: 4242, hostname: 'web-1' } },
      token,
    );
    expect(reg.data?.registerContainer).toMatchObject({ vmid: 4242, hostname: 'web-1', node: { id: node.id } });
    const refused = await server.gql(DeleteNode, { id: node.id }, token);
    expect(code(refused)).toBe('FAILED_PRECONDITION');
    expect((await server.gql(NodeById, { id: node.id }, token)).data?.node?.containers).toHaveLength(1);

    expect(
      (await server.gql(UnregisterContainer, { id: reg.data!.registerContainer.id }, token)).data?.unregisterContainer,
    ).toBe(true);
    expect((await server.gql(DeleteNode, { id: node.id }, token)).data?.deleteNode).toBe(true);
    expect(code(await server.gql(NodeById, { id: node.id }, token))).toBe('NOT_FOUND');
  });
});

describe('updateNode', () => {
  it('renames without asking Proxmox and keeps the stored secrets', async () => {
    const { token } = await newUser();
    const node = await createNode(token, { sshPassword: 'pw' });
    const versionCalls = sim.stats.count('/version');
    const res = await server.gql(UpdateNode, { input: { id: node.id, name: 'renamed', tokenSecret: '' } }, token);
    expect(res.data?.updateNode).toMatchObject({ name: 'renamed', hasSshPassword: true });
    expect(sim.stats.count('/version')).toBe(versionCalls);
    // The stored token secret still works.
    expect((await server.gql(TestNodeConnection, { id: node.id }, token)).data?.testNodeConnection.ok).toBe(true);
  });

  it('removes the SSH password on an empty string and sets a new one', async () => {
    const { token } = await newUser();
    const node = await createNode(token, { sshPassword: 'pw' });
    expect(
      (await server.gql(UpdateNode, { input: { id: node.id, sshPassword: '' } }, token)).data?.updateNode
        .hasSshPassword,
    ).toBe(false);
    expect(
      (await server.gql(UpdateNode, { input: { id: node.id, sshPassword: 'new' } }, token)).data?.updateNode
        .hasSshPassword,
    ).toBe(true);
  });

  it('re-tests when the connection changes and stores nothing when the test fails', async () => {
    const { token } = await newUser();
    const node = await createNode(token, { name: 'keep' });
    const badPort = await server.gql(
      UpdateNode,
      { input: { id: node.id, port: 1, name: 'changed', tokenSecret: sim.token.secret } },
      token,
    );
    expect(code(badPort)).toBe('PROXMOX_UNREACHABLE');
    const badSecret = await server.gql(UpdateNode, { input: { id: node.id, tokenSecret: 'wrong' } }, token);
    expect(code(badSecret)).toBe('PROXMOX_AUTH_FAILED');
    const badPin = await server.gql(
      UpdateNode,
      { input: { id: node.id, tlsFingerprint: null, tokenSecret: sim.token.secret } },
      token,
    );
    expect(code(badPin)).toBe('PROXMOX_TLS_UNTRUSTED');
    const unchanged = (await server.gql(NodeById, { id: node.id }, token)).data?.node;
    expect(unchanged?.name).toBe('keep');
    expect((await server.gql(TestNodeConnection, { id: node.id }, token)).data?.testNodeConnection.ok).toBe(true);

    // A new token that works is tested and kept.
    sim.addToken({ id: 'ops@pve!dash', secret: 'ops-secret-1' });
    const moved = await server.gql(
      UpdateNode,
      { input: { id: node.id, tokenId: 'ops@pve!dash', tokenSecret: 'ops-secret-1' } },
      token,
    );
    expect(moved.errors).toBeUndefined();
    expect(moved.data?.updateNode.tokenId).toBe('ops@pve!dash');
    expect((await server.gql(TestNodeConnection, { id: node.id }, token)).data?.testNodeConnection.ok).toBe(true);
  });

  it('never sends the stored token secret to a new host or under weaker TLS trust', async () => {
    const { token } = await newUser();
    const node = await createNode(token);
    const other = await startTestSimulator();
    try {
      for (const change of [
        { host: 'localhost', port: other.port },
        { port: other.port },
        { allowInsecureTls: true },
        { tlsFingerprint: other.fingerprint },
      ]) {
        const res = await server.gql(UpdateNode, { input: { id: node.id, ...change } }, token);
        expect(code(res)).toBe('BAD_USER_INPUT');
        expect(res.errors![0]!.extensions!.fields).toEqual({ 'input.tokenSecret': expect.stringMatching(/required/) });
      }
      // Nothing reached the other host: not even a TLS handshake.
      expect(other.stats.connections).toBe(0);
    } finally {
      await other.stop();
    }
  });

  it('answers CONFLICT when renaming onto another node of the user', async () => {
    const { token } = await newUser();
    await createNode(token, { name: 'one' });
    const two = await createNode(token, { name: 'two' });
    expect(code(await server.gql(UpdateNode, { input: { id: two.id, name: 'one' } }, token))).toBe('CONFLICT');
  });

  it('validates like createNode', async () => {
    const { token } = await newUser();
    const node = await createNode(token);
    const res = await server.gql(UpdateNode, { input: { id: node.id, port: 0, host: 'a b' } }, token);
    expect(code(res)).toBe('BAD_USER_INPUT');
    expect(Object.keys(res.errors![0]!.extensions!.fields as object).sort()).toEqual(['input.host', 'input.port']);
  });
});

describe('testNodeConnection', () => {
  it('reports success with latency, version, fingerprint and cluster facts', async () => {
    const { token } = await newUser();
    const node = await createNode(token, {}, clusterSim);
    const res = await server.gql(TestNodeConnection, { id: node.id }, token);
    expect(res.data?.testNodeConnection).toMatchObject({
      ok: true,
      version: '8.4.1',
      release: '8.4',
      fingerprint: clusterSim.fingerprint,
      clusterName: 'lab',
      pveNodeNames: ['pve1', 'pve2', 'pve3'],
      errorCode: null,
      message: null,
    });
    expect(res.data!.testNodeConnection.latencyMs).toBeGreaterThanOrEqual(0);
  });

  it('returns Proxmox failures as data instead of throwing', async () => {
    const { token } = await newUser();
    const failing = await startTestSimulator();
    try {
      const node = await createNode(token, {}, failing);
      failing.addFault({ kind: 'status', status: 403, reason: 'Permission check failed' });
      const res = await server.gql(TestNodeConnection, { id: node.id }, token);
      expect(res.errors).toBeUndefined();
      expect(res.data?.testNodeConnection).toMatchObject({ ok: false, errorCode: 'PROXMOX_FORBIDDEN' });
      failing.clearFaults();
      await failing.stop();
      const down = await server.gql(TestNodeConnection, { id: node.id }, token);
      expect(down.data?.testNodeConnection).toMatchObject({ ok: false, errorCode: 'PROXMOX_UNREACHABLE' });
      expect(down.data?.testNodeConnection.message).toBeTruthy();
    } finally {
      await failing.stop().catch(() => undefined);
    }
  });
});

describe('containers', () => {
  it('answers CONFLICT for a VMID already registered on the node, and validates the VMID', async () => {
    const { token } = await newUser();
    const node = await createNode(token);
    await server.gql(RegisterContainer, { input: { nodeId: node.id, vmid: 300 } }, token);
    expect(code(await server.gql(RegisterContainer, { input: { nodeId: node.id, vmid: 300 } }, token))).toBe(
      'CONFLICT',
    );
    const bad = await server.gql(
      RegisterContainer,
      { input: { nodeId: node.id, vmid: 99, hostname: 'not a host' } },
      token,
    );
    expect(code(bad)).toBe('BAD_USER_INPUT');
    expect(Object.keys(bad.errors![0]!.extensions!.fields as object).sort()).toEqual(['input.hostname', 'input.vmid']);
    expect(code(await server.gql(RegisterContainer, { input: { nodeId: 'not-a-uuid', vmid: 301 } }, token))).toBe(
      'NOT_FOUND',
    );
  });
});
