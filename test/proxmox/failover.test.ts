import net from 'node:net';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { EndpointResult, ProxmoxClient, ProxmoxClientOptions, ProxmoxTarget } from '../../src/proxmox/index.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { expectCode, makeClient, timed } from './helpers.js';

/** Correctness bounds, not benchmarks. */
const SLACK_MS = 1_500;

/** A TCP server that accepts connections and never says a word (no TLS handshake). */
async function blackhole(): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const srv = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  return {
    port: (srv.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        srv.close(() => r());
      }),
  };
}

describe('endpoint failover', () => {
  let sim: Simulator;
  let client: ProxmoxClient;
  const clients: ProxmoxClient[] = [];
  const extra = (o: Partial<ProxmoxClientOptions>) => {
    const c = makeClient(o);
    clients.push(c);
    return c;
  };
  let results: EndpointResult[];

  /** The primary member first, then the others, each with its own pin. */
  const target = (overrides: Partial<ProxmoxTarget> = {}): ProxmoxTarget => {
    const [primary, ...rest] = sim.members;
    return {
      host: primary!.host,
      port: primary!.port,
      tokenId: sim.token.id,
      tokenSecret: sim.token.secret,
      tlsFingerprint: primary!.fingerprint,
      fallbacks: rest.map((m) => ({ host: m.host, port: m.port, tlsFingerprint: m.fingerprint })),
      onEndpointResult: (r) => results.push(r),
      ...overrides,
    };
  };
  const outcomes = () => results.map((r) => [r.index, r.ok, r.code]);

  beforeAll(async () => {
    sim = await startSimulator({ clusterName: 'lab', nodes: 3, memberEndpoints: true });
  });
  afterAll(async () => {
    await sim.stop();
  });
  beforeEach(() => {
    client = makeClient({ preferWorkingEndpointMs: 0 });
    results = [];
    sim.clearFaults();
    sim.stats.reset();
  });
  afterEach(async () => {
    await client.close();
    await Promise.all(clients.splice(0).map((c) => c.close()));
    for (const m of sim.members) await sim.setMemberReachable(m.name, true);
  });

  it('the primary answers: no fallback is asked', async () => {
    expect((await client.version(target())).version).toBe('8.4.1');
    expect(outcomes()).toEqual([[0, true, null]]);
  });

  it('connection refused on the primary → the next endpoint answers', async () => {
    await sim.setMemberReachable(sim.members[0]!.name, false);
    expect((await client.version(target())).version).toBe('8.4.1');
    expect(outcomes()).toEqual([
      [0, false, 'PROXMOX_UNREACHABLE'],
      [1, true, null],
    ]);
    expect(results[0]!.error).toContain('connection refused');
  });

  it('two endpoints down → the third answers; all down → PROXMOX_UNREACHABLE after the retries', async () => {
    await sim.setMemberReachable(sim.members[0]!.name, false);
    await sim.setMemberReachable(sim.members[1]!.name, false);
    await client.version(target());
    expect(outcomes()).toEqual([
      [0, false, 'PROXMOX_UNREACHABLE'],
      [1, false, 'PROXMOX_UNREACHABLE'],
      [2, true, null],
    ]);
    results = [];
    await sim.setMemberReachable(sim.members[2]!.name, false);
    const err = await expectCode(client.version(target()), 'PROXMOX_UNREACHABLE');
    expect(err.extensions['endpointIndex']).toBe(2);
    // Three rounds (two retries) over three endpoints.
    expect(results).toHaveLength(9);
    expect(results.every((r) => !r.ok)).toBe(true);
  });

  it.each([503, 595, 596])('%i from the primary → the next endpoint answers', async (status) => {
    sim.addFault({ kind: 'status', status, times: 1 });
    expect(await client.guests(target())).toHaveLength(10);
    expect(outcomes()).toEqual([
      [0, false, 'PROXMOX_ERROR'],
      [1, true, null],
    ]);
  });

  it('401 answers at once, from the primary: no failover', async () => {
    sim.addFault({ kind: 'status', status: 401, times: 1 });
    await expectCode(client.version(target()), 'PROXMOX_AUTH_FAILED');
    expect(outcomes()).toEqual([[0, false, 'PROXMOX_AUTH_FAILED']]);
    expect(sim.stats.total).toBe(1);
  });

  it('403 and 400 answer at once and do not count against the endpoint', async () => {
    sim.addFault({ kind: 'status', status: 403, times: 1 });
    await expectCode(client.version(target()), 'PROXMOX_FORBIDDEN');
    sim.addFault({ kind: 'status', status: 400, times: 1 });
    await expectCode(client.version(target()), 'PROXMOX_ERROR');
    expect(outcomes()).toEqual([
      [0, true, null],
      [0, true, null],
    ]);
    expect(sim.stats.total).toBe(2);
  });

  it('a fallback with a wrong pin answers the TLS error: it is no way around the pin', async () => {
    await sim.setMemberReachable(sim.members[0]!.name, false);
    const [, second, third] = sim.members;
    const t = target({
      fallbacks: [
        { host: second!.host, port: second!.port, tlsFingerprint: third!.fingerprint },
        { host: third!.host, port: third!.port, tlsFingerprint: third!.fingerprint },
      ],
    });
    const err = await expectCode(client.version(t), 'PROXMOX_TLS_FINGERPRINT_MISMATCH');
    expect(err.extensions).toMatchObject({ fingerprint: second!.fingerprint, endpointIndex: 1, port: second!.port });
    expect(outcomes()).toEqual([
      [0, false, 'PROXMOX_UNREACHABLE'],
      [1, false, 'PROXMOX_TLS_FINGERPRINT_MISMATCH'],
    ]);
    expect(sim.stats.total).toBe(0); // the third endpoint never got the token
  });

  it('a fallback without a pin and a self-signed certificate → PROXMOX_TLS_UNTRUSTED, no further failover', async () => {
    await sim.setMemberReachable(sim.members[0]!.name, false);
    const [, second, third] = sim.members;
    const t = target({
      fallbacks: [
        { host: second!.host, port: second!.port },
        { host: third!.host, port: third!.port, tlsFingerprint: third!.fingerprint },
      ],
    });
    await expectCode(client.version(t), 'PROXMOX_TLS_UNTRUSTED');
    expect(outcomes().map((o) => o[0])).toEqual([0, 1]);
    // allowInsecureTls applies to every endpoint: then the unpinned fallback answers.
    results = [];
    await client.version({ ...t, allowInsecureTls: true });
    expect(outcomes()).toEqual([
      [0, false, 'PROXMOX_UNREACHABLE'],
      [1, true, null],
    ]);
  });

  it('every endpoint is held to the host policy before anything is sent', async () => {
    const metadata = target({ fallbacks: [{ host: '169.254.169.254', port: 8006 }] });
    await expectCode(client.version(metadata), 'HOST_NOT_ALLOWED');
    const noLoopback = extra({ allowLoopbackHosts: false });
    await expectCode(noLoopback.version(target({ host: 'example.invalid' })), 'HOST_NOT_ALLOWED');
    await expectCode(client.version(target({ fallbacks: [{ host: sim.host, port: 70_000 }] })), 'BAD_USER_INPUT');
    await expectCode(
      client.version(target({ fallbacks: [{ host: sim.host, port: 1, tlsFingerprint: 'AB:CD' }] })),
      'BAD_USER_INPUT',
    );
    expect(sim.stats.total).toBe(0);
    expect(results).toEqual([]);
  });

  it('a hanging primary gets its share of the deadline, then the fallback answers within it', async () => {
    const hole = await blackhole();
    try {
      const c = extra({ timeoutMs: 2_000, preferWorkingEndpointMs: 0 });
      const t = target({ host: '127.0.0.1', port: hole.port, tlsFingerprint: sim.members[0]!.fingerprint });
      const { ms, result } = await timed(c.version(t));
      expect(result.status).toBe('fulfilled');
      // Three endpoints: the primary gets a third of the 2 s.
      expect(ms).toBeGreaterThan(550);
      expect(ms).toBeLessThan(2_000);
      expect(outcomes()).toEqual([
        [0, false, 'PROXMOX_TIMEOUT'],
        [1, true, null],
      ]);
    } finally {
      await hole.close();
    }
  });

  it('every endpoint hanging → PROXMOX_TIMEOUT within the whole-request bound', async () => {
    const holes = await Promise.all([blackhole(), blackhole(), blackhole()]);
    try {
      const c = extra({ timeoutMs: 1_200 });
      const fp = sim.members[0]!.fingerprint;
      const t = target({
        host: '127.0.0.1',
        port: holes[0].port,
        tlsFingerprint: fp,
        fallbacks: holes.slice(1).map((h) => ({ host: '127.0.0.1', port: h.port, tlsFingerprint: fp })),
      });
      const { ms, result } = await timed(c.version(t));
      await expectCode(Promise.reject((result as PromiseRejectedResult).reason), 'PROXMOX_TIMEOUT');
      expect(ms).toBeLessThan(1_200 + SLACK_MS);
      expect(outcomes().map((o) => o[0])).toEqual([0, 1, 2]);
    } finally {
      await Promise.all(holes.map((h) => h.close()));
    }
  });

  it('remembers the endpoint that worked for preferWorkingEndpointMs, then starts at the primary again', async () => {
    const c = extra({ preferWorkingEndpointMs: 400 });
    await sim.setMemberReachable(sim.members[0]!.name, false);
    await c.version(target());
    results = [];
    await c.version(target());
    expect(outcomes()).toEqual([[1, true, null]]);
    await sim.setMemberReachable(sim.members[0]!.name, true);
    await new Promise((r) => setTimeout(r, 450));
    results = [];
    await c.version(target());
    expect(outcomes()).toEqual([[0, true, null]]);
  });
});
