import net from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ProxmoxClient, ProxmoxClientOptions } from '../../src/proxmox/index.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { expectCode, makeClient, timed } from './helpers.js';

/** Generous slack: these are correctness bounds, not benchmarks. */
const SLACK_MS = 1_500;

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('failure mapping', () => {
  let sim: Simulator;
  let client: ProxmoxClient;
  const clients: ProxmoxClient[] = [];
  const extra = (o: Partial<ProxmoxClientOptions>) => {
    const c = makeClient(o);
    clients.push(c);
    return c;
  };

  beforeAll(async () => {
    sim = await startSimulator({
      guests: 100,
      tokens: [
        { id: 'root@pam!full', secret: 'f3d1a2b4-0000-4000-8000-000000000001' },
        { id: 'audit@pve!none', secret: 'f3d1a2b4-0000-4000-8000-000000000002', privileges: 'none' },
      ],
    });
  });
  afterAll(async () => {
    await sim.stop();
  });
  beforeEach(() => {
    client = makeClient();
    sim.clearFaults();
    sim.stats.reset();
  });
  afterEach(async () => {
    await client.close();
    await Promise.all(clients.splice(0).map((c) => c.close()));
  });

  it('connection refused → PROXMOX_UNREACHABLE (retried, bounded)', async () => {
    const port = await freePort();
    const { ms, result } = await timed(client.version(sim.target({ port })));
    expect(result.status).toBe('rejected');
    const err = await expectCode(Promise.reject((result as PromiseRejectedResult).reason), 'PROXMOX_UNREACHABLE');
    expect(err.message).toContain('connection refused');
    expect(ms).toBeLessThan(5_000 + SLACK_MS);
  });

  it('DNS failure → PROXMOX_UNREACHABLE', async () => {
    const c = extra({ timeoutMs: 3_000 });
    let code: unknown;
    try {
      await c.version(sim.target({ host: 'no-such-host.invalid' }));
    } catch (e) {
      code = (e as { code?: unknown }).code;
    }
    // A resolver that does not answer at all ends in the deadline instead.
    expect(['PROXMOX_UNREACHABLE', 'PROXMOX_TIMEOUT']).toContain(code);
  });

  it('a hanging server → PROXMOX_TIMEOUT within the deadline', async () => {
    sim.addFault({ kind: 'hang', pathPrefix: '/version' });
    const c = extra({ timeoutMs: 600 });
    const { ms, result } = await timed(c.version(sim.target()));
    await expectCode(Promise.reject((result as PromiseRejectedResult).reason), 'PROXMOX_TIMEOUT');
    expect(ms).toBeGreaterThanOrEqual(550);
    expect(ms).toBeLessThan(600 + SLACK_MS);
  });

  it('added latency beyond the deadline → PROXMOX_TIMEOUT within the deadline', async () => {
    sim.addFault({ kind: 'latency', ms: 3_000, times: 1 });
    const c = extra({ timeoutMs: 500 });
    const { ms, result } = await timed(c.guests(sim.target()));
    await expectCode(Promise.reject((result as PromiseRejectedResult).reason), 'PROXMOX_TIMEOUT');
    expect(ms).toBeLessThan(500 + SLACK_MS);
  });

  it('latency within the deadline is fine', async () => {
    sim.addFault({ kind: 'latency', ms: 150, times: 1 });
    expect(await client.version(sim.target())).toMatchObject({ version: '8.4.1' });
  });

  it('a server that accepts TCP but never does TLS → PROXMOX_TIMEOUT within the deadline', async () => {
    const sockets = new Set<net.Socket>();
    const silent = net.createServer((s) => {
      sockets.add(s);
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (silent.address() as net.AddressInfo).port;
      const c = extra({ timeoutMs: 500 });
      const { ms, result } = await timed(c.version(sim.target({ port })));
      await expectCode(Promise.reject((result as PromiseRejectedResult).reason), 'PROXMOX_TIMEOUT');
      expect(ms).toBeLessThan(500 + SLACK_MS);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => silent.close(() => r()));
    }
  });

  it('retries never sleep past the deadline', async () => {
    sim.addFault({ kind: 'status', status: 503, pathPrefix: '/version' });
    sim.addFault({ kind: 'latency', ms: 100, pathPrefix: '/version' });
    const c = extra({ timeoutMs: 400 });
    const { ms, result } = await timed(c.version(sim.target()));
    expect(result.status).toBe('rejected');
    const code = (result as PromiseRejectedResult).reason.code as string;
    expect(['PROXMOX_ERROR', 'PROXMOX_TIMEOUT']).toContain(code);
    expect(ms).toBeLessThan(400 + SLACK_MS);
  });

  it('401 → PROXMOX_AUTH_FAILED, not retried, secret never in the message', async () => {
    const secret = 'this-is-the-wrong-secret-1234';
    const err = await expectCode(client.version(sim.target({ tokenSecret: secret })), 'PROXMOX_AUTH_FAILED');
    expect(err.message).toContain('authentication failure');
    expect(JSON.stringify({ m: err.message, e: err.extensions })).not.toContain(secret);
    expect(sim.stats.count('/version')).toBe(1);
  });

  it('401 after the server-side delay', async () => {
    const slow = await startSimulator({ guests: 1, authDelayMs: 300 });
    try {
      const { ms, result } = await timed(client.version(slow.target({ tokenSecret: 'nope' })));
      await expectCode(Promise.reject((result as PromiseRejectedResult).reason), 'PROXMOX_AUTH_FAILED');
      expect(ms).toBeGreaterThanOrEqual(280);
      // and a deadline shorter than the delay is a timeout
      const c = extra({ timeoutMs: 150 });
      await expectCode(c.version(slow.target({ tokenSecret: 'nope' })), 'PROXMOX_TIMEOUT');
    } finally {
      await slow.stop();
    }
  });

  it('403 → PROXMOX_FORBIDDEN, not retried; /version still works for that token', async () => {
    const t = sim.target({ tokenId: 'audit@pve!none', tokenSecret: 'f3d1a2b4-0000-4000-8000-000000000002' });
    expect(await client.version(t)).toMatchObject({ version: '8.4.1' });
    const err = await expectCode(client.clusterStatus(t), 'PROXMOX_FORBIDDEN');
    expect(err.message).toContain('Permission check failed');
    expect(sim.stats.count('/cluster/status')).toBe(1);
    await expectCode(client.nextIdRange(t), 'PROXMOX_FORBIDDEN');
    expect(sim.stats.count('/cluster/options')).toBe(1);
    const r = await client.testConnection(t);
    expect(r).toMatchObject({
      ok: false,
      errorCode: 'PROXMOX_FORBIDDEN',
      version: '8.4.1',
      fingerprint: sim.fingerprint,
    });
  });

  it('403 from a fault, too', async () => {
    sim.addFault({ kind: 'status', status: 403, reason: 'Permission check failed (/, Sys.Audit)', times: 1 });
    await expectCode(client.guests(sim.target()), 'PROXMOX_FORBIDDEN');
    expect(sim.stats.total).toBe(1);
  });

  it('595 → PROXMOX_ERROR with the reason phrase (retried, then given up)', async () => {
    sim.addFault({ kind: 'status', status: 595, reason: 'Connection refused', pathPrefix: '/cluster/resources' });
    const err = await expectCode(client.guests(sim.target()), 'PROXMOX_ERROR');
    expect(err.extensions['status']).toBe(595);
    expect(err.message).toContain('Connection refused');
    expect(sim.stats.count('/cluster/resources')).toBe(3); // 1 + 2 retries
  });

  it('596 → PROXMOX_ERROR, not retried', async () => {
    sim.addFault({ kind: 'status', status: 596, reason: 'tls_process_server_certificate: certificate verify failed' });
    const err = await expectCode(client.guests(sim.target()), 'PROXMOX_ERROR');
    expect(err.extensions['status']).toBe(596);
    expect(err.message).toContain('certificate verify failed');
    expect(sim.stats.total).toBe(1);
  });

  it('500 once → retried → success', async () => {
    sim.addFault({ kind: 'status', status: 500, times: 1, pathPrefix: '/cluster/resources' });
    const guests = await client.guests(sim.target());
    expect(guests).toHaveLength(100);
    expect(sim.stats.count('/cluster/resources')).toBe(2);
  });

  it('503 twice → retried twice → success; three times → PROXMOX_ERROR', async () => {
    sim.addFault({ kind: 'status', status: 503, times: 2 });
    expect(await client.nextId(sim.target())).toBe(200);
    expect(sim.stats.count('/cluster/nextid')).toBe(3);
    sim.stats.reset();
    sim.addFault({ kind: 'status', status: 503, times: 3 });
    const err = await expectCode(client.nextId(sim.target()), 'PROXMOX_ERROR');
    expect(err.message).toContain('Service Unavailable');
    expect(sim.stats.count('/cluster/nextid')).toBe(3);
  });

  it('a 5xx message from the body wins over the reason phrase', async () => {
    sim.addFault({
      kind: 'status',
      status: 500,
      reason: 'Internal Server Error',
      body: { data: null, message: 'unable to get any free VMID in range [100, 999999999]\n' },
    });
    const err = await expectCode(client.nextId(sim.target()), 'PROXMOX_ERROR');
    expect(err.message).toContain('unable to get any free VMID');
  });

  it('retries: 0 disables retries', async () => {
    const c = extra({ retries: 0 });
    sim.addFault({ kind: 'status', status: 500, times: 1 });
    await expectCode(c.version(sim.target()), 'PROXMOX_ERROR');
    expect(sim.stats.total).toBe(1);
  });

  it('malformed JSON → PROXMOX_ERROR, not retried', async () => {
    sim.addFault({ kind: 'malformed', times: 1 });
    const err = await expectCode(client.guests(sim.target()), 'PROXMOX_ERROR');
    expect(err.message).toContain('malformed JSON');
    expect(sim.stats.total).toBe(1);
  });

  it('a body without data → PROXMOX_ERROR', async () => {
    sim.addFault({ kind: 'status', status: 200, body: { nodata: true }, times: 1 });
    await expectCode(client.version(sim.target()), 'PROXMOX_ERROR');
  });

  it('connection reset once → retried → success', async () => {
    sim.addFault({ kind: 'reset', times: 1 });
    expect(await client.version(sim.target())).toMatchObject({ version: '8.4.1' });
    expect(sim.stats.count('/version')).toBe(2);
  });

  it('connection reset every time → PROXMOX_UNREACHABLE after the retries', async () => {
    sim.addFault({ kind: 'reset' });
    await expectCode(client.version(sim.target()), 'PROXMOX_UNREACHABLE');
    expect(sim.stats.count('/version')).toBe(3);
  });

  it('oversized response (content-length) → PROXMOX_ERROR "response too large"', async () => {
    const c = extra({ maxResponseBytes: 4_096 });
    const err = await expectCode(c.guests(sim.target()), 'PROXMOX_ERROR');
    expect(err.message).toContain('response too large');
    expect(sim.stats.total).toBe(1);
  });

  it('oversized response (chunked, default 16 MiB bound) → PROXMOX_ERROR "response too large"', async () => {
    sim.addFault({ kind: 'oversize', bytes: 17 * 1024 * 1024, times: 1 });
    const err = await expectCode(client.guests(sim.target()), 'PROXMOX_ERROR');
    expect(err.message).toContain('response too large');
    // the client still works afterwards
    expect(await client.guests(sim.target())).toHaveLength(100);
  });

  it('the token secret is scrubbed from any message', async () => {
    const t = sim.target();
    sim.addFault({ kind: 'status', status: 418, reason: `teapot ${t.tokenSecret} here`, times: 1 });
    const err = await expectCode(client.version(t), 'PROXMOX_ERROR');
    expect(err.message).not.toContain(t.tokenSecret);
    expect(err.message).toContain('***');
  });

  it('logs retries without secrets', async () => {
    const logs: string[] = [];
    const c = extra({
      logger: { debug: (o, m) => logs.push(JSON.stringify([o, m])), warn: (o, m) => logs.push(JSON.stringify([o, m])) },
    });
    sim.addFault({ kind: 'status', status: 502, times: 1 });
    await c.version(sim.target());
    expect(logs.length).toBeGreaterThan(0);
    for (const l of logs) expect(l).not.toContain(sim.target().tokenSecret);
  });

  it('rejects header injection in the token without echoing it', async () => {
    const err = await expectCode(client.version(sim.target({ tokenSecret: 'abc\r\nX-Evil: 1' })), 'BAD_USER_INPUT');
    expect(err.message).not.toContain('X-Evil');
    expect(sim.stats.total).toBe(0);
  });
});
