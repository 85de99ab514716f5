import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { SimPrivileges } from '../../src/sim/index.js';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { CreateNode, TestNodeConnectionPrivileges } from './documents.js';

let server: TestServer;
let sim: Simulator;
let n = 0;

beforeAll(async () => {
  [server, sim] = await Promise.all([startTestServer(), startTestSimulator()]);
});
afterAll(async () => {
  await Promise.all([server.stop(), sim.stop()]);
});
afterEach(() => {
  sim.clearFaults();
});

/** Registers the simulator for a new user, through a new token holding exactly `privileges`. */
async function registerWith(privileges: SimPrivileges) {
  const id = `dash${++n}@pve!pvegraph`;
  const secret = `secret-${n}-0000-4000-8000-000000000000`;
  sim.addToken({ id, secret, privileges });
  const { token } = await server.createUser();
  const res = await server.gql(
    CreateNode,
    { input: nodeInputFor(sim, { tokenId: id, tokenSecret: secret }) as never },
    token,
  );
  expect(res.errors, JSON.stringify(res.errors)).toBeUndefined();
  return { nodeId: res.data!.createNode.id, token };
}

async function testConnection(nodeId: string, token: string) {
  const res = await server.gql(TestNodeConnectionPrivileges, { id: nodeId }, token);
  expect(res.errors, JSON.stringify(res.errors)).toBeUndefined();
  return res.data!.testNodeConnection;
}

describe('ConnectionTest.missingPrivileges through testNodeConnection', () => {
  it('a token with every privilege: nothing missing', async () => {
    const { nodeId, token } = await registerWith('all');
    expect(await testConnection(nodeId, token)).toEqual({
      ok: true,
      errorCode: null,
      message: null,
      version: '8.4.1',
      missingPrivileges: [],
    });
  });

  it('the PVEGraph role on / (VM.Audit + Sys.Audit, propagated): nothing missing', async () => {
    const { nodeId, token } = await registerWith({ '/': ['VM.Audit', 'Sys.Audit'] });
    expect(await testConnection(nodeId, token)).toMatchObject({ ok: true, missingPrivileges: [] });
  });

  it('Sys.Audit on / without VM.Audit: registers, and the test names VM.Audit@/vms', async () => {
    const { nodeId, token } = await registerWith({ '/': ['Sys.Audit'] });
    expect(await testConnection(nodeId, token)).toMatchObject({
      ok: true,
      errorCode: null,
      missingPrivileges: ['VM.Audit@/vms'],
    });
  });

  it('VM.Audit on a few guests only does not count for /vms', async () => {
    const { nodeId, token } = await registerWith({
      '/': ['Sys.Audit'],
      '/vms/100': ['VM.Audit'],
      '/vms/101': ['VM.Audit'],
    });
    expect((await testConnection(nodeId, token)).missingPrivileges).toEqual(['VM.Audit@/vms']);
  });

  it('/access/permissions failing (an older Proxmox): the test is still ok and reports nothing missing', async () => {
    const { nodeId, token } = await registerWith({ '/': ['Sys.Audit'] });
    sim.addFault({
      kind: 'status',
      status: 501,
      reason: "Method 'GET /access/permissions' not implemented",
      pathPrefix: '/access/permissions',
    });
    expect(await testConnection(nodeId, token)).toEqual({
      ok: true,
      errorCode: null,
      message: null,
      version: '8.4.1',
      missingPrivileges: [],
    });
  });

  it('a failed test (the host answers 503) reports nothing missing', async () => {
    const { nodeId, token } = await registerWith('all');
    sim.addFault({ kind: 'status', status: 503, reason: 'Service Unavailable' });
    const r = await testConnection(nodeId, token);
    expect(r.ok).toBe(false);
    expect(r.missingPrivileges).toEqual([]);
  });
});
