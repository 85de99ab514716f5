import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Agent, request } from 'undici';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { makeClient } from './helpers.js';

describe('simulator', () => {
  let sim: Simulator;
  let agent: Agent;
  const call = async (method: string, path: string, opts: { auth?: string | null; body?: string; type?: string } = {}) => {
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
    let json: unknown = null;
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
    expect(dup).toEqual({ status: 400, reason: 'Parameter verification failed.', json: { errors: { vmid: 'VM 100 already exists' }, data: null } });
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
        data: [{ type: 'node', id: 'node/pve', name: 'pve', nodeid: 0, ip: '192.0.2.10', local: 1, online: 1, level: '' }],
      });
    } finally {
      await solo.stop();
    }
  });

  it('creates (form or JSON) and deletes guests; LXC list vmids are strings in old-server mode', async () => {
    expect((await call('POST', '/api2/json/nodes/pve2/lxc', { body: 'vmid=700&hostname=ct7', type: 'application/x-www-form-urlencoded' })).status).toBe(200);
    expect((await call('POST', '/api2/json/nodes/pve2/qemu', { body: JSON.stringify({ vmid: 701 }), type: 'application/json' })).status).toBe(200);
    expect((await call('POST', '/api2/json/nodes/pve2/qemu', { body: JSON.stringify({ vmid: 701 }), type: 'application/json' })).status).toBe(400);
    const lxc = await call('GET', '/api2/json/nodes/pve2/lxc');
    const entry = (lxc.json as { data: Array<{ vmid: unknown; name: string }> }).data.find((e) => e.name === 'ct7');
    expect(entry?.vmid).toBe('700');
    expect((await call('DELETE', '/api2/json/nodes/pve2/lxc/700')).status).toBe(200);
    expect((await call('DELETE', '/api2/json/nodes/pve2/lxc/700')).status).toBe(500);
    expect(sim.removeGuest(701)).toBe(true);
  });

  it('control endpoints: faults, stats, node state', async () => {
    expect((await call('POST', '/_sim/faults', { auth: null, body: JSON.stringify({ kind: 'status', status: 503, times: 1 }), type: 'application/json' })).status).toBe(200);
    expect((await call('GET', '/api2/json/version')).status).toBe(503);
    expect((await call('GET', '/api2/json/version')).status).toBe(200);
    expect((await call('POST', '/_sim/faults', { auth: null, body: JSON.stringify({ kind: 'bogus' }), type: 'application/json' })).status).toBe(400);
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
    const child = spawn(tsx, [cli, '--port', '0', '--guests', '3', '--cluster', 'demo', '--nodes', '2', '--token', 'root@pam!cli=s3cr3t-token'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
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
        const t = { host: '127.0.0.1', port, tokenId: 'root@pam!cli', tokenSecret: 's3cr3t-token', tlsFingerprint: fp! };
        expect(await client.clusterStatus(t)).toEqual({ clusterName: 'demo', nodeNames: ['pve1', 'pve2'] });
        expect(await client.guests(t)).toHaveLength(3);
      } finally {
        await client.close();
      }
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGINT');
      expect(await exited).toBe(0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 30_000);
});
