import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ProxmoxClient, ProxmoxTarget } from '../../src/proxmox/index.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { expectCode, makeClient } from './helpers.js';

describe('ProxmoxClient against a standalone simulator', () => {
  let sim: Simulator;
  let client: ProxmoxClient;
  beforeAll(async () => {
    sim = await startSimulator({ guests: 12, vmidGapEvery: 4, stringLxcVmids: true });
  });
  afterAll(async () => {
    await sim.stop();
  });
  beforeEach(() => {
    client = makeClient();
    sim.stats.reset();
    sim.clearFaults();
  });
  afterEach(async () => {
    await client.close();
  });

  it('reads the version', async () => {
    const v = await client.version(sim.target());
    expect(v).toEqual({ version: '8.4.1', release: '8.4', repoid: '2a5fa54a8503f96d' });
    expect(sim.stats.count('/version')).toBe(1);
  });

  it('reports a standalone node: clusterName null, its node name', async () => {
    expect(await client.clusterStatus(sim.target())).toMatchObject({
      clusterName: null,
      nodeNames: ['pve'],
      members: [{ name: 'pve', online: true }],
    });
  });

  it('lists every guest of /cluster/resources, ascending, with gaps', async () => {
    const guests = await client.guests(sim.target());
    expect(guests).toHaveLength(12);
    expect(guests.map((g) => g.vmid)).toEqual(sim.guests().map((g) => g.vmid));
    // gap after every 4th guest: 100..103, 105..108, 110..113
    expect(guests.map((g) => g.vmid).slice(0, 6)).toEqual([100, 101, 102, 103, 105, 106]);
    expect(new Set(guests.map((g) => g.type))).toEqual(new Set(['qemu', 'lxc']));
    const g100 = guests[0]!;
    expect(g100).toEqual({ vmid: 100, type: 'qemu', node: 'pve', status: 'running', name: 'vm-100', template: false });
    expect(guests.some((g) => g.template === true)).toBe(true);
    expect(sim.stats.count('/cluster/resources')).toBe(1);
  });

  it('accepts LXC vmids sent as strings by /nodes/{node}/lxc (PVE < 8.2)', async () => {
    const list = await client.nodeGuests(sim.target(), 'pve');
    expect(list.map((g) => g.vmid)).toEqual(sim.guests().map((g) => g.vmid));
    const lxc = list.filter((g) => g.type === 'lxc');
    expect(lxc.length).toBeGreaterThan(0);
    for (const g of lxc) expect(typeof g.vmid).toBe('number');
  });

  it('nextId: lowest free id (sent as a string), a free id, and CONFLICT for a taken one', async () => {
    const t = sim.target();
    expect(await client.nextId(t)).toBe(104); // first gap
    expect(await client.nextId(t, 104)).toBe(104);
    expect(await client.nextId(t, 5000)).toBe(5000);
    sim.stats.reset();
    const err = await expectCode(client.nextId(t, 100), 'CONFLICT');
    expect(err.message).toBe('VM 100 already exists');
    expect(err.extensions['vmid']).toBe(100);
    // a 4xx is never retried
    expect(sim.stats.count('/cluster/nextid')).toBe(1);
  });

  it('nextId refuses an out-of-range vmid without asking Proxmox', async () => {
    await expectCode(client.nextId(sim.target(), 99), 'BAD_USER_INPUT');
    expect(sim.stats.total).toBe(0);
  });

  it('a 400 other than "already exists" is PROXMOX_ERROR carrying the errors object', async () => {
    sim.addFault({
      kind: 'status',
      status: 400,
      reason: 'Parameter verification failed.',
      body: { errors: { vmid: 'value must have a minimum value of 100' }, data: null },
      pathPrefix: '/cluster/nextid',
      times: 1,
    });
    const err = await expectCode(client.nextId(sim.target(), 150), 'PROXMOX_ERROR');
    expect(err.extensions['proxmoxErrors']).toEqual({ vmid: 'value must have a minimum value of 100' });
    expect(err.extensions['status']).toBe(400);
    expect(err.message).toContain('Parameter verification failed.');
    expect(err.message).toContain('minimum value of 100');
    expect(sim.stats.count('/cluster/nextid')).toBe(1);
  });

  it('sees guests created and deleted through the API and the control API', async () => {
    const t = sim.target();
    const base = (await client.guests(t)).length;
    sim.addGuest({ vmid: 4242, type: 'lxc' });
    const created = await fetchJson(sim, 'POST', '/nodes/pve/qemu', { vmid: 4243, name: 'web' });
    expect(created.status).toBe(200);
    const dup = await fetchJson(sim, 'POST', '/nodes/pve/lxc', { vmid: 4243 });
    expect(dup.status).toBe(400);
    expect(dup.body).toEqual({ errors: { vmid: 'VM 4243 already exists' }, data: null });
    let guests = await client.guests(t);
    expect(guests).toHaveLength(base + 2);
    expect(guests.find((g) => g.vmid === 4243)).toMatchObject({ type: 'qemu', name: 'web' });
    await expectCode(client.nextId(t, 4243), 'CONFLICT');
    const del = await fetchJson(sim, 'DELETE', '/nodes/pve/qemu/4243');
    expect(del.status).toBe(200);
    expect(sim.removeGuest(4242)).toBe(true);
    guests = await client.guests(t);
    expect(guests).toHaveLength(base);
    expect(await client.nextId(t, 4243)).toBe(4243);
  });

  it('reuses one TLS connection for sequential calls', async () => {
    const t = sim.target();
    for (let i = 0; i < 10; i++) await client.version(t);
    expect(sim.stats.count('/version')).toBe(10);
    // undici's pool may open a second socket when a request is dispatched in the same tick
    // the previous one completed; it never opens one per request.
    expect(sim.stats.connections).toBeLessThanOrEqual(2);
    // Concurrent calls open more, up to connectionsPerNode (16 by default), and queue beyond.
    await Promise.all(Array.from({ length: 40 }, () => client.version(t)));
    expect(sim.stats.count('/version')).toBe(50);
    expect(sim.stats.connections).toBeLessThanOrEqual(16);
  });

  it('keeps a bounded number of pools (evicted pools are closed, calls still work)', async () => {
    const small = makeClient({ maxPools: 1 });
    try {
      const pinned = sim.target();
      const insecure = sim.target({ tlsFingerprint: null, allowInsecureTls: true });
      for (let i = 0; i < 3; i++) {
        await small.version(pinned);
        await small.version(insecure); // evicts the pinned pool, and the other way round
      }
      expect(sim.stats.count('/version')).toBe(6);
      expect(sim.stats.connections).toBeGreaterThanOrEqual(6);
    } finally {
      await small.close();
    }
  });

  it('checks a target changed in place again (secret, pin, fallbacks) before it is used', async () => {
    const t: ProxmoxTarget = sim.target();
    expect(await client.nextId(t, 5000)).toBe(5000);
    const secret = t.tokenSecret;
    t.tokenSecret = 'bad\nsecret';
    await expectCode(client.nextId(t, 5000), 'BAD_USER_INPUT');
    t.tokenSecret = 'wrong-secret';
    await expectCode(client.nextId(t, 5000), 'PROXMOX_AUTH_FAILED');
    t.tokenSecret = secret;
    t.tlsFingerprint = 'AB'.repeat(32);
    await expectCode(client.nextId(t, 5000), 'PROXMOX_TLS_FINGERPRINT_MISMATCH');
    t.tlsFingerprint = sim.fingerprint;
    const fallback = { host: '127.0.0.1', port: sim.port };
    t.fallbacks = [fallback];
    expect(await client.nextId(t, 5000)).toBe(5000);
    fallback.host = '169.254.169.254'; // the same array, its endpoint changed
    await expectCode(client.nextId(t, 5000), 'HOST_NOT_ALLOWED');
    t.fallbacks = [];
    expect(await client.nextId(t, 5000)).toBe(5000);
  });

  it('testConnection: ok with version, fingerprint, node names', async () => {
    const r = await client.testConnection(sim.target());
    expect(r).toMatchObject({
      ok: true,
      version: '8.4.1',
      release: '8.4',
      fingerprint: sim.fingerprint,
      clusterName: null,
      pveNodeNames: ['pve'],
      errorCode: null,
      message: null,
    });
    expect(Number.isInteger(r.latencyMs)).toBe(true);
    expect(r.latencyMs).toBeGreaterThanOrEqual(0);
  });

  it('testConnection never throws for Proxmox failures (wrong token)', async () => {
    const r = await client.testConnection(sim.target({ tokenSecret: 'wrong-secret' }));
    expect(r.ok).toBe(false);
    expect(r.errorCode).toBe('PROXMOX_AUTH_FAILED');
    expect(r.fingerprint).toBe(sim.fingerprint);
    expect(r.version).toBeNull();
    expect(r.pveNodeNames).toEqual([]);
    expect(r.message).not.toContain('wrong-secret');
  });

  it('testConnection reports a refused host without connecting', async () => {
    const strict = makeClient({ allowLoopbackHosts: false });
    try {
      const r = await strict.testConnection(sim.target());
      expect(r).toMatchObject({ ok: false, errorCode: 'HOST_NOT_ALLOWED', fingerprint: null });
      expect(sim.stats.connections).toBe(0);
    } finally {
      await strict.close();
    }
  });
});

describe('ProxmoxClient against a cluster simulator', () => {
  let sim: Simulator;
  let client: ProxmoxClient;
  beforeAll(async () => {
    sim = await startSimulator({ clusterName: 'lab', nodes: 3, guests: 30, offlineNodes: ['pve3'] });
  });
  afterAll(async () => {
    await sim.stop();
  });
  beforeEach(() => {
    client = makeClient();
    sim.stats.reset();
  });
  afterEach(async () => {
    await client.close();
  });

  it('reports the cluster name and every node', async () => {
    const status = await client.clusterStatus(sim.target());
    expect(status).toMatchObject({ clusterName: 'lab', nodeNames: ['pve1', 'pve2', 'pve3'] });
    // pve3 is offline in this cluster; every member has the address the cluster knows it by.
    expect(status.members.map((m) => [m.name, m.online])).toEqual([
      ['pve1', true],
      ['pve2', true],
      ['pve3', false],
    ]);
    expect(status.members.every((m) => typeof m.address === 'string' && m.address.length > 0)).toBe(true);
  });

  it("identifies the cluster by its members' certificate fingerprints, offline members included", async () => {
    const identity = await client.identity(sim.target(), 'lab');
    expect(identity).toEqual({ clusterName: 'lab', memberFingerprints: Object.values(sim.memberFingerprints).sort() });
    expect(new Set(identity!.memberFingerprints).size).toBe(3);
  });

  it('cannot identify the cluster for a token that may not see its members (null, not an error)', async () => {
    const blind = { id: 'audit@pve!blind', secret: 'blind-secret', privileges: { '/vms': ['VM.Audit'] } };
    sim.addToken(blind);
    expect(await client.identity(sim.target({ tokenId: blind.id, tokenSecret: blind.secret }), 'lab')).toBeNull();
  });

  it('keeps guests of an offline node (only id, node, status "unknown", type, vmid)', async () => {
    const guests = await client.guests(sim.target());
    expect(guests).toHaveLength(30);
    const offline = guests.filter((g) => g.node === 'pve3');
    expect(offline.length).toBe(10);
    for (const g of offline) {
      expect(g.status).toBe('unknown');
      expect(g.name).toBeUndefined();
      expect(g.template).toBeUndefined();
    }
    expect(guests.filter((g) => g.node !== 'pve3').every((g) => g.name !== undefined)).toBe(true);
  });

  it('nodeGuests on an offline node is a 595 PROXMOX_ERROR with the reason, retried', async () => {
    const err = await expectCode(client.nodeGuests(sim.target(), 'pve3'), 'PROXMOX_ERROR');
    expect(err.extensions['status']).toBe(595);
    expect(err.message).toContain('No route to host');
  });

  it('follows nodes going online and offline', async () => {
    sim.setNodeOnline('pve3', true);
    try {
      const guests = await client.guests(sim.target());
      expect(guests.filter((g) => g.status === 'unknown')).toHaveLength(0);
    } finally {
      sim.setNodeOnline('pve3', false);
    }
  });

  it('testConnection reports the cluster', async () => {
    const r = await client.testConnection(sim.target());
    expect(r).toMatchObject({
      ok: true,
      clusterName: 'lab',
      pveNodeNames: ['pve1', 'pve2', 'pve3'],
      fingerprint: sim.fingerprint,
    });
  });
});

describe('tolerated response shapes', () => {
  let sim: Simulator;
  let client: ProxmoxClient;
  beforeAll(async () => {
    sim = await startSimulator({ guests: 10, stringResourceVmids: true });
  });
  afterAll(async () => {
    await sim.stop();
  });
  beforeEach(() => {
    client = makeClient();
    sim.clearFaults();
  });
  afterEach(async () => {
    await client.close();
  });

  it('coerces vmids sent as strings in /cluster/resources', async () => {
    const guests = await client.guests(sim.target());
    expect(guests.map((g) => g.vmid)).toEqual(sim.guests().map((g) => g.vmid));
  });

  it('accepts extra fields, unknown resource types, numeric strings and a missing vmid (from id)', async () => {
    sim.addFault({
      kind: 'status',
      status: 200,
      reason: 'OK',
      pathPrefix: '/cluster/resources',
      times: 1,
      body: {
        data: [
          {
            id: 'qemu/100',
            type: 'qemu',
            vmid: 100,
            node: 'a',
            status: 'running',
            name: 'x',
            template: 0,
            someNewField: { nested: true },
            hastate: 'started',
          },
          { id: 'lxc/101', type: 'lxc', vmid: '101', node: 'b', status: 'stopped', template: '1' },
          { id: 'lxc/102', type: 'lxc', node: 'b', status: 'unknown' },
          { id: 'storage/a/local', type: 'storage', node: 'a', storage: 'local' },
          { id: 'qemu/99999', type: 'qemu', vmid: 99999, node: 'c', status: 'unknown' },
        ],
        extraTopLevel: 1,
      },
    });
    const guests = await client.guests(sim.target());
    expect(guests).toEqual([
      { vmid: 100, type: 'qemu', node: 'a', status: 'running', name: 'x', template: false },
      { vmid: 101, type: 'lxc', node: 'b', status: 'stopped', template: true },
      { vmid: 102, type: 'lxc', node: 'b', status: 'unknown' },
      { vmid: 99999, type: 'qemu', node: 'c', status: 'unknown' },
    ]);
  });

  it('accepts a PVE 7 version answer with extra fields', async () => {
    sim.addFault({
      kind: 'status',
      status: 200,
      pathPrefix: '/version',
      times: 1,
      body: { data: { version: '7.4-16', release: '7.4', repoid: '0f39f621', console: 'html5', keyboard: 'de' } },
    });
    expect(await client.version(sim.target())).toEqual({ version: '7.4-16', release: '7.4', repoid: '0f39f621' });
  });

  it('rejects a guest list whose entry has an unusable vmid', async () => {
    sim.addFault({
      kind: 'status',
      status: 200,
      pathPrefix: '/cluster/resources',
      times: 1,
      body: { data: [{ id: 'qemu/x', type: 'qemu', vmid: 'abc', node: 'a' }] },
    });
    await expectCode(client.guests(sim.target()), 'PROXMOX_ERROR');
  });

  it('nextid sent as a number is accepted too', async () => {
    sim.addFault({ kind: 'status', status: 200, pathPrefix: '/cluster/nextid', times: 1, body: { data: 117 } });
    expect(await client.nextId(sim.target())).toBe(117);
  });

  it('handles 10,000 guests within the default response bound', async () => {
    const big = await startSimulator({ guests: 10_000, clusterName: 'big', nodes: 4 });
    try {
      const guests = await client.guests(big.target());
      expect(guests).toHaveLength(10_000);
      expect(guests[9_999]!.vmid).toBe(10_099);
    } finally {
      await big.stop();
    }
  });
});

async function fetchJson(
  sim: Simulator,
  method: string,
  path: string,
  body?: Record<string, unknown>,
): Promise<{ status: number; body: unknown }> {
  const { request, Agent } = await import('undici');
  const agent = new Agent({ connect: { rejectUnauthorized: false } });
  try {
    const res = await request(`${sim.apiUrl}${path}`, {
      method: method as 'POST',
      dispatcher: agent,
      headers: {
        authorization: `PVEAPIToken=${sim.token.id}=${sim.token.secret}`,
        ...(body ? { 'content-type': 'application/x-www-form-urlencoded' } : {}),
      },
      ...(body ? { body: new URLSearchParams(Object.entries(body).map(([k, v]) => [k, String(v)])).toString() } : {}),
    });
    return { status: res.statusCode, body: await res.body.json() };
  } finally {
    await agent.close();
  }
}
