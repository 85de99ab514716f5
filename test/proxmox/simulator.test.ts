import { spawn } from 'node:child_process';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { generateSelfSigned, type SimTask, startSimulator, type Simulator } from '../../src/sim/index.js';
import { makeClient } from './helpers.js';

describe('simulator', () => {
  let sim: Simulator;
  let agent: Agent;
  const call = async (
    method: string,
    path: string,
    opts: { auth?: string | null; body?: string; type?: string } = {},
  ) => {
    const auth = opts.auth === undefined ? `PVEAPIToken=${sim.token.id}=${sim.token.secret}` : opts.auth;
    const res = await request(`${sim.url}${path}`, {
      method: method as 'GET',
      dispatcher: agent,
      headers: {
        ...(auth ? { authorization: auth } : {}),
        ...(opts.type ? { 'content-type': opts.type } : {}),
      },
      ...(opts.body !== undefined ? { body: opts.body } : {}),
    });
    const text = await res.body.text();
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch {
      json = text;
    }
    return { status: res.statusCode, reason: res.statusText, json };
  };

  beforeAll(async () => {
    sim = await startSimulator({ clusterName: 'c1', nodes: 2, guests: 6, stringLxcVmids: true });
    agent = new Agent({ connect: { rejectUnauthorized: false } });
  });
  afterAll(async () => {
    await agent.close();
    await sim.stop();
  });
  beforeEach(() => {
    sim.clearFaults();
    sim.stats.reset();
  });

  it('uses real envelopes, reason phrases and the 400 errors object', async () => {
    const v = await call('GET', '/api2/json/version');
    expect(v).toMatchObject({ status: 200, json: { data: { version: '8.4.1', release: '8.4' } } });
    const unauth = await call('GET', '/api2/json/version', { auth: null });
    expect(unauth).toMatchObject({ status: 401, reason: 'authentication failure' });
    const wrong = await call('GET', '/api2/json/version', { auth: `PVEAPIToken=${sim.token.id}=nope` });
    expect(wrong.status).toBe(401);
    const dup = await call('GET', '/api2/json/cluster/nextid?vmid=100');
    expect(dup).toEqual({
      status: 400,
      reason: 'Parameter verification failed.',
      json: { errors: { vmid: 'VM 100 already exists' }, data: null },
    });
    const next = await call('GET', '/api2/json/cluster/nextid');
    expect(next.json).toEqual({ data: '106' });
    const low = await call('GET', '/api2/json/cluster/nextid?vmid=5');
    expect(low.json).toEqual({ errors: { vmid: 'value must have a minimum value of 100' }, data: null });
    const unknown = await call('GET', '/api2/json/nope');
    expect(unknown.status).toBe(501);
  });

  it('cluster/status: one cluster entry plus node entries', async () => {
    const r = await call('GET', '/api2/json/cluster/status');
    const data = (r.json as { data: Array<{ type: string }> }).data;
    expect(data.filter((e) => e.type === 'cluster')).toHaveLength(1);
    expect(data.filter((e) => e.type === 'node')).toHaveLength(2);
  });

  it('standalone cluster/status has only the node entry with nodeid 0, local 1', async () => {
    const solo = await startSimulator({ guests: 0 });
    try {
      const r = await request(`${solo.apiUrl}/cluster/status`, {
        dispatcher: agent,
        headers: { authorization: `PVEAPIToken=${solo.token.id}=${solo.token.secret}` },
      });
      expect(await r.body.json()).toEqual({
        data: [
          { type: 'node', id: 'node/pve', name: 'pve', nodeid: 0, ip: '192.0.2.10', local: 1, online: 1, level: '' },
        ],
      });
    } finally {
      await solo.stop();
    }
  });

  it('creates (form or JSON) and deletes guests; LXC list vmids are strings in old-server mode', async () => {
    expect(
      (
        await call('POST', '/api2/json/nodes/pve2/lxc', {
          body: 'vmid=700&hostname=ct7',
          type: 'application/x-www-form-urlencoded',
        })
      ).status,
    ).toBe(200);
    expect(
      (
        await call('POST', '/api2/json/nodes/pve2/qemu', {
          body: JSON.stringify({ vmid: 701 }),
          type: 'application/json',
        })
      ).status,
    ).toBe(200);
    expect(
      (
        await call('POST', '/api2/json/nodes/pve2/qemu', {
          body: JSON.stringify({ vmid: 701 }),
          type: 'application/json',
        })
      ).status,
    ).toBe(400);
    const lxc = await call('GET', '/api2/json/nodes/pve2/lxc');
    const entry = (lxc.json as { data: Array<{ vmid: unknown; name: string }> }).data.find((e) => e.name === 'ct7');
    expect(entry?.vmid).toBe('700');
    expect((await call('DELETE', '/api2/json/nodes/pve2/lxc/700')).status).toBe(200);
    expect((await call('DELETE', '/api2/json/nodes/pve2/lxc/700')).status).toBe(500);
    expect(sim.removeGuest(701)).toBe(true);
  });

  it('control endpoints: faults, stats, node state', async () => {
    expect(
      (
        await call('POST', '/_sim/faults', {
          auth: null,
          body: JSON.stringify({ kind: 'status', status: 503, times: 1 }),
          type: 'application/json',
        })
      ).status,
    ).toBe(200);
    expect((await call('GET', '/api2/json/version')).status).toBe(503);
    expect((await call('GET', '/api2/json/version')).status).toBe(200);
    expect(
      (
        await call('POST', '/_sim/faults', {
          auth: null,
          body: JSON.stringify({ kind: 'bogus' }),
          type: 'application/json',
        })
      ).status,
    ).toBe(400);
    const stats = await call('GET', '/_sim/stats', { auth: null });
    expect(stats.json).toMatchObject({ data: { total: 2, paths: { '/api2/json/version': 2 } } });
    expect((await call('POST', '/_sim/nodes/pve2/offline', { auth: null })).status).toBe(200);
    expect((await call('GET', '/api2/json/nodes/pve2/qemu')).status).toBe(595);
    expect((await call('POST', '/_sim/nodes/pve2/online', { auth: null })).status).toBe(200);
    expect((await call('GET', '/api2/json/nodes/pve2/qemu')).status).toBe(200);
    await call('POST', '/_sim/stats/reset', { auth: null });
    expect(sim.stats.total).toBe(0);
    expect((await call('DELETE', '/_sim/faults', { auth: null })).status).toBe(200);
  });

  it('faults are scoped by path prefix', async () => {
    sim.addFault({ kind: 'status', status: 500, pathPrefix: '/cluster/resources' });
    expect((await call('GET', '/api2/json/version')).status).toBe(200);
    expect((await call('GET', '/api2/json/cluster/resources?type=vm')).status).toBe(500);
    expect(sim.faults()).toHaveLength(1);
  });

  it('counts requests per path (N concurrent calls → N counted)', async () => {
    const client = makeClient();
    try {
      await Promise.all(Array.from({ length: 5 }, () => client.guests(sim.target())));
      expect(sim.stats.count('/cluster/resources')).toBe(5);
      expect(sim.stats.count('/api2/json/cluster/resources')).toBe(5);
      expect(sim.stats.snapshot().paths).toEqual({ '/api2/json/cluster/resources': 5 });
    } finally {
      await client.close();
    }
  });

  it('stop() ends hanging requests', async () => {
    const s = await startSimulator({ guests: 1 });
    s.addFault({ kind: 'hang' });
    const client = makeClient({ timeoutMs: 10_000, retries: 0 });
    const pending = client.version(s.target());
    pending.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 100));
    await s.stop();
    await expect(pending).rejects.toMatchObject({ code: 'PROXMOX_UNREACHABLE' });
    await client.close();
  });
});

describe('simulator CLI', () => {
  it('prints the URL, fingerprint and a ready token, serves, and stops on SIGINT', async () => {
    const cli = fileURLToPath(new URL('../../src/sim/cli.ts', import.meta.url));
    const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));
    const child = spawn(
      tsx,
      [
        cli,
        '--port',
        '0',
        '--guests',
        '3',
        '--cluster',
        'demo',
        '--nodes',
        '2',
        '--token',
        'root@pam!cli=s3cr3t-token',
      ],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        // Its own process group: tsx runs the CLI in a child that a failed test must not orphan.
        detached: true,
      },
    );
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      out += d.toString();
    });
    try {
      const deadline = Date.now() + 20_000;
      while (!out.includes('Press Ctrl-C') && Date.now() < deadline && child.exitCode === null) {
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(out).toContain('Press Ctrl-C');
      const url = /listening on (https:\/\/\S+)/.exec(out)?.[1];
      const fp = /TLS fingerprint:\s+(\S+)/.exec(out)?.[1];
      expect(url).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/api2\/json$/);
      expect(fp).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
      expect(out).toContain('root@pam!cli');
      expect(out).toContain('s3cr3t-token');
      const port = Number(/:(\d+)\/api2/.exec(url!)![1]);
      const client = makeClient();
      try {
        const t = {
          host: '127.0.0.1',
          port,
          tokenId: 'root@pam!cli',
          tokenSecret: 's3cr3t-token',
          tlsFingerprint: fp!,
        };
        expect(await client.clusterStatus(t)).toMatchObject({ clusterName: 'demo', nodeNames: ['pve1', 'pve2'] });
        expect(await client.guests(t)).toHaveLength(3);
      } finally {
        await client.close();
      }
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGINT');
      expect(await exited).toBe(0);
    } finally {
      if (child.exitCode === null && child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    }
  }, 30_000);
});

/** One request to any simulator endpoint (token auth by default; `auth: null` for control endpoints). */
async function simCall(
  agent: Agent,
  baseUrl: string,
  method: string,
  path: string,
  opts: { token?: { id: string; secret: string } | null; json?: unknown } = {},
): Promise<{ status: number; reason: string; json: unknown }> {
  const res = await request(`${baseUrl}${path}`, {
    method: method as 'GET',
    dispatcher: agent,
    headers: {
      ...(opts.token ? { authorization: `PVEAPIToken=${opts.token.id}=${opts.token.secret}` } : {}),
      ...(opts.json !== undefined ? { 'content-type': 'application/json' } : {}),
    },
    ...(opts.json !== undefined ? { body: JSON.stringify(opts.json) } : {}),
  });
  const text = await res.body.text();
  let json: unknown = text;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: keep the text
  }
  return { status: res.statusCode, reason: res.statusText, json };
}

const dataOf = <T>(r: { json: unknown }): T => (r.json as { data: T }).data;
const FP = /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/;

/** SHA-256 fingerprint of the certificate a TLS endpoint presents. */
function servedFingerprint(host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host, port, rejectUnauthorized: false }, () => {
      const fp = socket.getPeerCertificate().fingerprint256;
      socket.end();
      resolve(fp);
    });
    socket.once('error', reject);
  });
}

describe('simulator: per-member identity', () => {
  let agent: Agent;
  const sims: Simulator[] = [];
  beforeAll(() => {
    agent = new Agent({ connect: { rejectUnauthorized: false } });
  });
  afterAll(async () => {
    await agent.close();
    await Promise.all(sims.map((s) => s.stop()));
  });
  const start = async (o: Parameters<typeof startSimulator>[0]) => {
    const s = await startSimulator(o);
    sims.push(s);
    return s;
  };

  it('GET /nodes: every member has its own fingerprint, offline ones too; the local one is the served certificate', async () => {
    const sim = await start({ clusterName: 'c1', nodes: 3, offlineNodes: ['pve3'], guests: 0 });
    const nodes = dataOf<Array<{ node: string; status: string; ssl_fingerprint?: string }>>(
      await simCall(agent, sim.apiUrl, 'GET', '/nodes', { token: sim.token }),
    );
    expect(nodes.map((n) => [n.node, n.status])).toEqual([
      ['pve1', 'online'],
      ['pve2', 'online'],
      ['pve3', 'offline'],
    ]);
    const fps = Object.fromEntries(nodes.map((n) => [n.node, n.ssl_fingerprint]));
    expect(fps).toEqual(sim.memberFingerprints);
    expect(fps['pve1']).toBe(sim.fingerprint);
    for (const fp of Object.values(fps)) expect(fp).toMatch(FP);
    expect(new Set(Object.values(fps)).size).toBe(3);
    expect(await servedFingerprint(sim.host, sim.port)).toBe(sim.fingerprint);

    // Another simulator of the same name and members is another cluster.
    const twin = await start({ clusterName: 'c1', nodes: 3, guests: 0 });
    for (const n of ['pve1', 'pve2', 'pve3']) expect(twin.memberFingerprints[n]).not.toBe(sim.memberFingerprints[n]);
  });

  it('memberFingerprints and localNode make two simulators look like members of one cluster', async () => {
    const [a, b] = await Promise.all([
      generateSelfSigned('pve1.sim.invalid', ['127.0.0.1']),
      generateSelfSigned('pve2.sim.invalid', ['127.0.0.1']),
    ]);
    const fingerprints = { pve1: a.fingerprint, pve2: b.fingerprint };
    const one = await start({ clusterName: 'lab', nodes: 2, certificate: a, memberFingerprints: fingerprints });
    const two = await start({
      clusterName: 'lab',
      nodes: 2,
      certificate: b,
      localNode: 'pve2',
      memberFingerprints: fingerprints,
    });
    expect(one.memberFingerprints).toEqual(two.memberFingerprints);
    expect(two.fingerprint).toBe(b.fingerprint);
    const status = dataOf<Array<{ type: string; name: string; local?: number }>>(
      await simCall(agent, two.apiUrl, 'GET', '/cluster/status', { token: two.token }),
    );
    expect(status.filter((e) => e.local === 1).map((e) => e.name)).toEqual(['pve2']);
    // The served certificate's fingerprint cannot be overridden.
    await expect(
      startSimulator({ clusterName: 'lab', nodes: 2, certificate: a, memberFingerprints: { pve1: b.fingerprint } }),
    ).rejects.toThrow(/served/);
    await expect(
      startSimulator({ clusterName: 'lab', nodes: 2, memberFingerprints: { pve9: b.fingerprint } }),
    ).rejects.toThrow(/not one of the nodes/);
  });

  it('GET /cluster/config/join lists every member with its fingerprint; a standalone node has none', async () => {
    const sim = await start({ clusterName: 'c2', nodes: 3, offlineNodes: ['pve2'], guests: 0 });
    const join = dataOf<{
      nodelist: Array<Record<string, string>>;
      preferred_node: string;
      totem: Record<string, unknown>;
      config_digest: string;
    }>(await simCall(agent, sim.apiUrl, 'GET', '/cluster/config/join', { token: sim.token }));
    expect(join.preferred_node).toBe('pve1');
    expect(join.totem).toMatchObject({ cluster_name: 'c2', config_version: expect.any(String) });
    expect(join.config_digest).toMatch(/^[0-9a-f]{40}$/);
    expect(join.nodelist).toHaveLength(3);
    expect(join.nodelist[1]).toEqual({
      name: 'pve2',
      nodeid: '2',
      pve_fp: sim.memberFingerprints['pve2'],
      pve_addr: '192.0.2.11',
      quorum_votes: '1',
      ring0_addr: '192.0.2.11',
    });
    const solo = await start({ guests: 0 });
    const r = await simCall(agent, solo.apiUrl, 'GET', '/cluster/config/join', { token: solo.token });
    expect(r).toMatchObject({ status: 500, reason: 'node is not in a cluster, no join info available!' });
    sim.addToken({ id: 'nobody@pve!t', secret: 's', privileges: 'none' });
    expect(
      (await simCall(agent, sim.apiUrl, 'GET', '/cluster/config/join', { token: { id: 'nobody@pve!t', secret: 's' } }))
        .status,
    ).toBe(403);
    expect(
      (await simCall(agent, sim.apiUrl, 'GET', '/cluster/config/join?node=pve9', { token: sim.token })).reason,
    ).toBe("unknown node 'pve9'");
  });

  it('GET /nodes/{node}/certificates/info describes the member certificate; 595 when offline, 403 without Sys.Audit', async () => {
    const sim = await start({
      clusterName: 'c3',
      nodes: 3,
      offlineNodes: ['pve3'],
      guests: 0,
      tokens: [
        { id: 'root@pam!t', secret: 'a' },
        { id: 'ops@pve!t', secret: 'b', privileges: { '/nodes/pve1': ['Sys.Audit'] } },
      ],
    });
    const local = dataOf<Array<Record<string, unknown>>>(
      await simCall(agent, sim.apiUrl, 'GET', '/nodes/pve1/certificates/info', { token: sim.token }),
    );
    expect(local).toHaveLength(1);
    expect(local[0]).toMatchObject({
      filename: 'pve-ssl.pem',
      fingerprint: sim.fingerprint,
      pem: sim.certificate,
      san: expect.arrayContaining(['127.0.0.1']),
    });
    const other = dataOf<Array<Record<string, unknown>>>(
      await simCall(agent, sim.apiUrl, 'GET', '/nodes/pve2/certificates/info', { token: sim.token }),
    );
    expect(other[0]).toMatchObject({
      filename: 'pve-ssl.pem',
      fingerprint: sim.memberFingerprints['pve2'],
      'public-key-type': 'rsa',
      'public-key-bits': 2048,
      subject: expect.stringContaining('CN=pve2'),
      issuer: expect.stringContaining('PVE Cluster Manager CA'),
      notbefore: expect.any(Number),
      notafter: expect.any(Number),
    });
    expect(
      (await simCall(agent, sim.apiUrl, 'GET', '/nodes/pve3/certificates/info', { token: sim.token })).status,
    ).toBe(595);
    const ops = { id: 'ops@pve!t', secret: 'b' };
    expect((await simCall(agent, sim.apiUrl, 'GET', '/nodes/pve1/certificates/info', { token: ops })).status).toBe(200);
    expect((await simCall(agent, sim.apiUrl, 'GET', '/nodes/pve2/certificates/info', { token: ops })).status).toBe(403);
  });
});

describe('simulator: datacenter next-id range', () => {
  let agent: Agent;
  let sim: Simulator;
  beforeAll(async () => {
    agent = new Agent({ connect: { rejectUnauthorized: false } });
    sim = await startSimulator({ guests: 3, nextId: { lower: 1000, upper: 1003 } });
  });
  afterAll(async () => {
    await agent.close();
    await sim.stop();
  });
  const get = (path: string) => simCall(agent, sim.apiUrl, 'GET', path, { token: sim.token });

  it('GET /cluster/options reports next-id with string values', async () => {
    expect(dataOf<Record<string, unknown>>(await get('/cluster/options'))).toMatchObject({
      keyboard: expect.any(String),
      console: expect.any(String),
      'next-id': { lower: '1000', upper: '1003' },
    });
  });

  it('GET /cluster/nextid answers the lowest free id in [lower, upper), 500 when the range is full; ?vmid= ignores the range', async () => {
    expect(dataOf(await get('/cluster/nextid'))).toBe('1000');
    expect(sim.nextFreeVmid()).toBe(1000);
    sim.addGuest({ vmid: 1000 });
    sim.addGuest({ vmid: 1002 });
    expect(dataOf(await get('/cluster/nextid'))).toBe('1001');
    sim.addGuest({ vmid: 1001 });
    expect(await get('/cluster/nextid')).toMatchObject({
      status: 500,
      reason: 'unable to get any free VMID in range [1000, 1003]',
    });
    expect(() => sim.nextFreeVmid()).toThrow('unable to get any free VMID in range [1000, 1003]');
    expect(() => sim.addGuest({})).toThrow(/unable to get any free VMID/);
    // An explicit id is only checked for existence.
    expect(dataOf(await get('/cluster/nextid?vmid=150'))).toBe('150');
    expect(await get('/cluster/nextid?vmid=100')).toMatchObject({
      status: 400,
      json: { errors: { vmid: 'VM 100 already exists' } },
    });
    for (const v of [1000, 1001, 1002]) sim.removeGuest(v);
  });

  it('setNextIdRange and POST /_sim/options/next-id change or clear the range (only lower may be set)', async () => {
    sim.setNextIdRange(null);
    expect(sim.nextIdRange()).toBeNull();
    expect(dataOf<Record<string, unknown>>(await get('/cluster/options'))).not.toHaveProperty('next-id');
    expect(dataOf(await get('/cluster/nextid'))).toBe('103');

    const set = await simCall(agent, sim.url, 'POST', '/_sim/options/next-id', { json: { lower: 2000 } });
    expect(set.status).toBe(200);
    expect(dataOf<Record<string, unknown>>(await get('/cluster/options'))['next-id']).toEqual({ lower: '2000' });
    expect(dataOf(await get('/cluster/nextid'))).toBe('2000');
    expect(sim.nextFreeVmid()).toBe(2000);

    expect(
      (await simCall(agent, sim.url, 'POST', '/_sim/options/next-id', { json: { lower: 500, upper: 400 } })).status,
    ).toBe(400);
    expect(() => sim.setNextIdRange({ lower: 50 })).toThrow();
    expect((await simCall(agent, sim.url, 'POST', '/_sim/options/next-id', { json: null })).status).toBe(200);
    expect(sim.nextIdRange()).toBeNull();
    expect(dataOf(await get('/cluster/nextid'))).toBe('103');
  });
});

describe('simulator: permissions', () => {
  let agent: Agent;
  let sim: Simulator;
  const auditor = { id: 'audit@pve!t', secret: 'a' };
  const nobody = { id: 'nobody@pve!t', secret: 'n' };
  const root = { id: 'root@pam!t', secret: 'r' };
  beforeAll(async () => {
    agent = new Agent({ connect: { rejectUnauthorized: false } });
    sim = await startSimulator({
      clusterName: 'p1',
      nodes: 2,
      guests: 4, // 100, 102 on pve1; 101, 103 on pve2
      tokens: [
        root,
        {
          ...auditor,
          privileges: { '/vms/101': ['VM.Audit'], '/vms/102/': ['VM.Audit', 'VM.PowerMgmt'], '/nodes': ['Sys.Audit'] },
        },
        { ...nobody, privileges: 'none' },
      ],
    });
  });
  afterAll(async () => {
    await agent.close();
    await sim.stop();
  });
  const get = (path: string, token: { id: string; secret: string }) =>
    simCall(agent, sim.apiUrl, 'GET', path, { token });

  it("GET /access/permissions: 'all' holds everything on /, 'none' nothing, a map its grants", async () => {
    const all = dataOf<Record<string, Record<string, number>>>(await get('/access/permissions', root));
    for (const p of ['Sys.Audit', 'VM.Audit', 'VM.Allocate', 'Sys.Modify', 'Datastore.Audit', 'VM.PowerMgmt'])
      expect(all['/']?.[p]).toBe(1);
    expect(dataOf(await get('/access/permissions', nobody))).toEqual({});
    const mine = dataOf<Record<string, Record<string, number>>>(await get('/access/permissions', auditor));
    expect(mine['/vms/101']).toEqual({ 'VM.Audit': 1 });
    expect(mine['/vms/102']).toEqual({ 'VM.Audit': 1, 'VM.PowerMgmt': 1 });
    expect(mine['/nodes']).toEqual({ 'Sys.Audit': 1 });
    expect(mine['/']).toBeUndefined();
    // ?path= answers the privileges that reach that path, inherited ones included.
    expect(dataOf(await get('/access/permissions?path=/nodes/pve2', auditor))).toEqual({
      '/nodes/pve2': { 'Sys.Audit': 1 },
    });
    expect(dataOf(await get('/access/permissions?path=/vms/100', auditor))).toEqual({});
    // ?userid= another token: needs Sys.Audit on /access.
    expect(
      dataOf(await get(`/access/permissions?userid=${encodeURIComponent(auditor.id)}&path=/vms/101`, root)),
    ).toEqual({ '/vms/101': { 'VM.Audit': 1 } });
    expect((await get(`/access/permissions?userid=${encodeURIComponent(root.id)}`, auditor)).status).toBe(403);
  });

  it('permission checks propagate from parent paths', async () => {
    expect((await get('/cluster/status', auditor)).status).toBe(403);
    expect((await get('/nodes/pve1/certificates/info', auditor)).status).toBe(200);
    // As in Proxmox, any valid token may ask for the next free VMID.
    expect((await get('/cluster/nextid', auditor)).status).toBe(200);
    sim.addToken({ id: 'alloc@pve!t', secret: 'x', privileges: { '/': ['Sys.Audit'], '/vms': ['VM.Allocate'] } });
    const alloc = { id: 'alloc@pve!t', secret: 'x' };
    expect((await get('/cluster/status', alloc)).status).toBe(200);
    expect((await get('/cluster/nextid', alloc)).status).toBe(200);
    expect(
      (await simCall(agent, sim.apiUrl, 'POST', '/nodes/pve1/qemu', { token: alloc, json: { vmid: 900 } })).status,
    ).toBe(200);
    expect((await simCall(agent, sim.apiUrl, 'DELETE', '/nodes/pve1/qemu/900', { token: alloc })).status).toBe(200);
    // A grant on one VMID allows that one only.
    sim.addToken({ id: 'one@pve!t', secret: 'y', privileges: { '/vms/901': ['VM.Allocate'] } });
    const one = { id: 'one@pve!t', secret: 'y' };
    expect(
      (await simCall(agent, sim.apiUrl, 'POST', '/nodes/pve1/lxc', { token: one, json: { vmid: 902 } })).status,
    ).toBe(403);
    expect(
      (await simCall(agent, sim.apiUrl, 'POST', '/nodes/pve1/lxc', { token: one, json: { vmid: 901 } })).status,
    ).toBe(200);
    expect(sim.removeGuest(901)).toBe(true);
  });

  it('listings show only guests the token may audit', async () => {
    const res = dataOf<Array<{ type: string; vmid?: number; node?: string }>>(await get('/cluster/resources', auditor));
    expect(res.filter((e) => e.type !== 'node').map((e) => e.vmid)).toEqual([101, 102]);
    expect(res.filter((e) => e.type === 'node').map((e) => e.node)).toEqual(['pve1', 'pve2']);
    const onPve1 = dataOf<Array<{ vmid: number }>>(await get('/nodes/pve1/qemu', auditor));
    expect(onPve1.map((g) => g.vmid)).toEqual([]); // 100 is not auditable; 102 is a container
    expect(
      dataOf<Array<{ vmid: number | string }>>(await get('/nodes/pve1/lxc', auditor)).map((g) => Number(g.vmid)),
    ).toEqual([102]);
    expect(dataOf<unknown[]>(await get('/cluster/resources?type=vm', root))).toHaveLength(4);
    expect(dataOf<unknown[]>(await get('/cluster/resources', nobody))).toEqual([]);
    expect(dataOf<unknown[]>(await get('/nodes', nobody))).toEqual([]);
  });
});

describe('simulator: tasks and changes behind the API', () => {
  let agent: Agent;
  let sim: Simulator;
  const own = { id: 'own@pve!t', secret: 'o' };
  beforeAll(async () => {
    agent = new Agent({ connect: { rejectUnauthorized: false } });
    sim = await startSimulator({
      clusterName: 't1',
      nodes: 2,
      guests: 2,
      tokens: [
        { id: 'root@pam!t', secret: 'r' },
        { ...own, privileges: { '/vms': ['VM.Allocate', 'VM.Audit'] } },
      ],
    });
  });
  afterAll(async () => {
    await agent.close();
    await sim.stop();
  });
  const tasksAs = async (token: { id: string; secret: string }) =>
    dataOf<SimTask[]>(await simCall(agent, sim.apiUrl, 'GET', '/cluster/tasks', { token }));

  it('records API creates and destroys as finished tasks, newest first; without Sys.Audit only the own', async () => {
    const created = await simCall(agent, sim.apiUrl, 'POST', '/nodes/pve2/lxc', { token: own, json: { vmid: 300 } });
    const destroyed = await simCall(agent, sim.apiUrl, 'DELETE', '/nodes/pve2/lxc/300', { token: own });
    sim.addGuest({ vmid: 301, type: 'qemu', node: 'pve1' });
    sim.removeGuest(301);
    const all = await tasksAs(sim.token);
    expect(all.slice(0, 4).map((t) => [t.type, t.id, t.user])).toEqual([
      ['qmdestroy', '301', 'root@pam'],
      ['qmcreate', '301', 'root@pam'],
      ['vzdestroy', '300', own.id],
      ['vzcreate', '300', own.id],
    ]);
    const create = all[3]!;
    expect(create.upid).toBe(dataOf(created));
    expect(all[2]!.upid).toBe(dataOf(destroyed));
    expect(create).toMatchObject({
      node: 'pve2',
      status: 'OK',
      pid: expect.any(Number),
      pstart: expect.any(Number),
      starttime: expect.any(Number),
      endtime: expect.any(Number),
    });
    expect(create.upid).toMatch(/^UPID:pve2:[0-9A-F]{8}:[0-9A-F]{8}:[0-9A-F]{8}:vzcreate:300:own@pve!t:$/);
    expect(parseInt(create.upid.split(':')[4]!, 16)).toBe(create.starttime);
    expect((await tasksAs(own)).map((t) => t.id)).toEqual(['300', '300']);
    expect(sim.tasks()).toEqual(all);
  });

  it('POST /_sim/guests creates, DELETE /_sim/guests/{vmid} destroys (404 when absent); both record tasks', async () => {
    const made = await simCall(agent, sim.url, 'POST', '/_sim/guests', {
      json: { vmid: 400, type: 'qemu', node: 'pve2', name: 'web' },
    });
    expect(made).toMatchObject({ status: 200, json: { data: { vmid: 400, type: 'qemu', node: 'pve2', name: 'web' } } });
    const auto = dataOf<{ vmid: number; type: string }>(
      await simCall(agent, sim.url, 'POST', '/_sim/guests', { json: {} }),
    );
    expect(auto.vmid).toBe(sim.nextFreeVmid() - 1);
    expect((await simCall(agent, sim.url, 'POST', '/_sim/guests', { json: { vmid: 400 } })).status).toBe(400);
    expect((await simCall(agent, sim.url, 'POST', '/_sim/guests', { json: { node: 'nope' } })).status).toBe(400);
    expect((await simCall(agent, sim.url, 'DELETE', '/_sim/guests/400')).status).toBe(200);
    expect((await simCall(agent, sim.url, 'DELETE', '/_sim/guests/400')).status).toBe(404);
    expect(
      sim
        .tasks()
        .slice(0, 3)
        .map((t) => [t.type, t.id]),
    ).toEqual([
      ['qmdestroy', '400'],
      [auto.type === 'lxc' ? 'vzcreate' : 'qmcreate', String(auto.vmid)],
      ['qmcreate', '400'],
    ]);
    expect(dataOf<SimTask[]>(await simCall(agent, sim.url, 'GET', '/_sim/tasks'))).toEqual(sim.tasks());
  });

  it('keeps the last 1000 tasks', async () => {
    for (let i = 0; i < 520; i++) {
      sim.addGuest({ vmid: 5000 });
      sim.removeGuest(5000);
    }
    const tasks = sim.tasks();
    expect(tasks).toHaveLength(1000);
    expect(tasks[0]).toMatchObject({ type: 'vzdestroy', id: '5000' });
  });

  it('churn creates and destroys guests until stopped (method and control endpoint)', async () => {
    const before = sim.tasks()[0]!.upid;
    sim.startChurn({ intervalMs: 5, minGuests: 2, maxGuests: 6 });
    await waitFor(() => sim.tasks().findIndex((t) => t.upid === before) >= 5);
    sim.stopChurn();
    const n = sim.guests().length;
    expect(n).toBeGreaterThanOrEqual(2);
    expect(n).toBeLessThanOrEqual(6);
    const settled = sim.tasks()[0]!.upid;
    await new Promise((r) => setTimeout(r, 40));
    expect(sim.tasks()[0]!.upid).toBe(settled);

    expect((await simCall(agent, sim.url, 'POST', '/_sim/churn', { json: { intervalMs: 5 } })).status).toBe(200);
    await waitFor(() => sim.tasks()[0]!.upid !== settled);
    expect((await simCall(agent, sim.url, 'DELETE', '/_sim/churn')).status).toBe(200);
    expect(await simCall(agent, sim.url, 'POST', '/_sim/churn', { json: { intervalMs: 0 } })).toMatchObject({
      status: 400,
      reason: 'intervalMs must be a number >= 1',
    });
    // Reasons outside Latin-1 cannot go on a status line; they are answered, not dropped.
    expect((await simCall(agent, sim.url, 'POST', '/_sim/faults', { json: { kind: 'latency', ms: -1 } })).status).toBe(
      400,
    );
  });

  it('stop() ends the churn', async () => {
    const s = await startSimulator({ guests: 1 });
    s.startChurn({ intervalMs: 5 });
    await waitFor(() => s.tasks().length > 0);
    await s.stop();
    const n = s.tasks().length;
    await new Promise((r) => setTimeout(r, 40));
    expect(s.tasks()).toHaveLength(n);
  });
});

describe('simulator: members on their own ports', () => {
  let agent: Agent;
  let sim: Simulator;
  beforeAll(async () => {
    agent = new Agent({ connect: { rejectUnauthorized: false } });
    sim = await startSimulator({ clusterName: 'm1', nodes: 3, guests: 3, memberEndpoints: true });
  });
  afterAll(async () => {
    await agent.close();
    await sim.stop();
  });

  it('every member answers with its own certificate, as itself, on the shared state', async () => {
    expect(sim.members.map((m) => m.name)).toEqual(['pve1', 'pve2', 'pve3']);
    expect(sim.members[0]).toEqual({
      name: 'pve1',
      host: sim.host,
      port: sim.port,
      fingerprint: sim.fingerprint,
      url: sim.url,
    });
    expect(new Set(sim.members.map((m) => m.port)).size).toBe(3);
    for (const m of sim.members) {
      expect(m.fingerprint).toBe(sim.memberFingerprints[m.name]);
      expect(await servedFingerprint(m.host, m.port)).toBe(m.fingerprint);
      const status = dataOf<Array<{ type: string; name: string; local?: number }>>(
        await simCall(agent, `${m.url}/api2/json`, 'GET', '/cluster/status', { token: sim.token }),
      );
      expect(status.filter((e) => e.local === 1).map((e) => e.name)).toEqual([m.name]);
    }
    const pve3 = sim.members[2]!;
    expect(
      (
        await simCall(agent, `${pve3.url}/api2/json`, 'POST', '/nodes/pve1/qemu', {
          token: sim.token,
          json: { vmid: 777 },
        })
      ).status,
    ).toBe(200);
    const seen = dataOf<Array<{ vmid: number }>>(
      await simCall(agent, sim.apiUrl, 'GET', '/cluster/resources?type=vm', { token: sim.token }),
    );
    expect(seen.map((g) => g.vmid)).toContain(777);
    expect(sim.tasks()[0]).toMatchObject({ type: 'qmcreate', id: '777' });
    const join = dataOf<{ preferred_node: string }>(
      await simCall(agent, `${pve3.url}/api2/json`, 'GET', '/cluster/config/join', { token: sim.token }),
    );
    expect(join.preferred_node).toBe('pve3');
  });

  it('setMemberReachable cuts a member off (connections refused, open ones closed) and brings it back on the same port', async () => {
    const pve2 = sim.members[1]!;
    const api = `${pve2.url}/api2/json`;
    sim.addFault({ kind: 'hang', pathPrefix: '/version', times: 1 });
    const hanging = simCall(agent, api, 'GET', '/version', { token: sim.token });
    hanging.catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
    await sim.setMemberReachable('pve2', false);
    await expect(hanging).rejects.toThrow();
    await expect(simCall(agent, api, 'GET', '/version', { token: sim.token })).rejects.toMatchObject({
      code: 'ECONNREFUSED',
    });
    // The others still answer, and the node itself stays online for the cluster.
    const nodes = dataOf<Array<{ node: string; status: string }>>(
      await simCall(agent, sim.apiUrl, 'GET', '/nodes', { token: sim.token }),
    );
    expect(nodes.find((n) => n.node === 'pve2')?.status).toBe('online');
    await sim.setMemberReachable('pve2', true);
    expect((await simCall(agent, api, 'GET', '/version', { token: sim.token })).status).toBe(200);
    expect(sim.members[1]!.port).toBe(pve2.port);
    expect((await simCall(agent, sim.url, 'POST', '/_sim/members/pve3/unreachable')).status).toBe(200);
    await expect(
      simCall(agent, `${sim.members[2]!.url}/api2/json`, 'GET', '/version', { token: sim.token }),
    ).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect((await simCall(agent, sim.url, 'POST', '/_sim/members/pve3/reachable')).status).toBe(200);
    await expect(sim.setMemberReachable('nope', false)).rejects.toThrow(/no endpoint/);
  });

  it('without memberEndpoints only the primary serves', async () => {
    const s = await startSimulator({ clusterName: 'm2', nodes: 2, guests: 0 });
    try {
      expect(s.members).toEqual([{ name: 'pve1', host: s.host, port: s.port, fingerprint: s.fingerprint, url: s.url }]);
    } finally {
      await s.stop();
    }
  });
});

async function waitFor(cond: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
