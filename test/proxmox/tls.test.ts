import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  fetchCertificateFingerprint,
  fingerprintsEqual,
  normalizeFingerprint,
  type ProxmoxClient,
} from '../../src/proxmox/index.js';
import { generateCaSigned, startSimulator, type Simulator } from '../../src/sim/index.js';
import { expectCode, makeClient } from './helpers.js';

const WRONG_FP = 'AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99';

describe('fingerprint helpers', () => {
  it('normalizes case and separators, rejects non-SHA-256 strings', () => {
    const fp = 'ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89:ab:cd:ef:01:23:45:67:89';
    const canon = fp.toUpperCase();
    expect(normalizeFingerprint(fp)).toBe(canon);
    expect(normalizeFingerprint(fp.replace(/:/g, ''))).toBe(canon);
    expect(normalizeFingerprint(`sha256 ${fp.replace(/:/g, ' ')}`)).toBe(canon);
    expect(normalizeFingerprint('AB:CD')).toBeNull();
    expect(normalizeFingerprint('zz'.repeat(32))).toBeNull();
    expect(fingerprintsEqual(fp, canon)).toBe(true);
    expect(fingerprintsEqual(fp, WRONG_FP)).toBe(false);
  });
});

describe('TLS modes against a self-signed simulator', () => {
  let sim: Simulator;
  let client: ProxmoxClient;
  beforeAll(async () => {
    sim = await startSimulator({ guests: 3 });
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

  it('exposes an upper-case colon hex SHA-256 fingerprint', () => {
    expect(sim.fingerprint).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/);
  });

  it('pinned fingerprint: accepted, in any case and with or without colons', async () => {
    for (const fp of [sim.fingerprint, sim.fingerprint.toLowerCase(), sim.fingerprint.replace(/:/g, '')]) {
      const c = makeClient();
      try {
        expect(await c.version(sim.target({ tlsFingerprint: fp }))).toMatchObject({ version: '8.4.1' });
      } finally {
        await c.close();
      }
    }
  });

  it('pinned mismatch → PROXMOX_TLS_FINGERPRINT_MISMATCH with the presented fingerprint; no request sent', async () => {
    const err = await expectCode(
      client.version(sim.target({ tlsFingerprint: WRONG_FP })),
      'PROXMOX_TLS_FINGERPRINT_MISMATCH',
    );
    expect(err.extensions['fingerprint']).toBe(sim.fingerprint);
    expect(err.extensions['expected']).toBe(WRONG_FP);
    expect(sim.stats.total).toBe(0); // the token never reached the server
  });

  it('a pin wins over allowInsecureTls', async () => {
    await expectCode(
      client.version(sim.target({ tlsFingerprint: WRONG_FP, allowInsecureTls: true })),
      'PROXMOX_TLS_FINGERPRINT_MISMATCH',
    );
    expect(sim.stats.total).toBe(0);
  });

  it('default verification of a self-signed certificate → PROXMOX_TLS_UNTRUSTED with its fingerprint; no request sent', async () => {
    const err = await expectCode(client.version(sim.target({ tlsFingerprint: null })), 'PROXMOX_TLS_UNTRUSTED');
    expect(err.extensions['fingerprint']).toBe(sim.fingerprint);
    expect(err.message).toContain(sim.fingerprint);
    expect(sim.stats.total).toBe(0);
    expect(sim.stats.count('/version')).toBe(0);
  });

  it('allowInsecureTls accepts any certificate', async () => {
    expect(await client.version(sim.target({ tlsFingerprint: null, allowInsecureTls: true }))).toMatchObject({
      version: '8.4.1',
    });
  });

  it('an invalid pin is BAD_USER_INPUT before any connection', async () => {
    await expectCode(client.version(sim.target({ tlsFingerprint: 'not-a-fingerprint' })), 'BAD_USER_INPUT');
    expect(sim.stats.connections).toBe(0);
  });

  it('testConnection reports the fingerprint of an untrusted certificate', async () => {
    const r = await client.testConnection(sim.target({ tlsFingerprint: null }));
    expect(r).toMatchObject({ ok: false, errorCode: 'PROXMOX_TLS_UNTRUSTED', fingerprint: sim.fingerprint });
    const m = await client.testConnection(sim.target({ tlsFingerprint: WRONG_FP }));
    expect(m).toMatchObject({ ok: false, errorCode: 'PROXMOX_TLS_FINGERPRINT_MISMATCH', fingerprint: sim.fingerprint });
  });

  it('fetchCertificateFingerprint reads the presented certificate without sending a request', async () => {
    const fp = await fetchCertificateFingerprint(sim.host, sim.port, {
      timeoutMs: 2_000,
      allowLoopbackHosts: true,
      allowPrivateHosts: false,
    });
    expect(fp).toBe(sim.fingerprint);
    expect(sim.stats.total).toBe(0);
    await expectCode(
      fetchCertificateFingerprint(sim.host, sim.port, {
        timeoutMs: 2_000,
        allowLoopbackHosts: false,
        allowPrivateHosts: true,
      }),
      'HOST_NOT_ALLOWED',
    );
  });

  it('a renewed certificate is detected on new connections (pin mismatch)', async () => {
    const renewed = await startSimulator({ guests: 1 });
    try {
      expect(renewed.fingerprint).not.toBe(sim.fingerprint);
      const err = await expectCode(
        client.version(renewed.target({ tlsFingerprint: sim.fingerprint })),
        'PROXMOX_TLS_FINGERPRINT_MISMATCH',
      );
      expect(err.extensions['fingerprint']).toBe(renewed.fingerprint);
    } finally {
      await renewed.stop();
    }
  });
});

describe('verified TLS (certificate signed by a CA the client trusts)', () => {
  let pki: Awaited<ReturnType<typeof generateCaSigned>>;
  let sim: Simulator;
  beforeAll(async () => {
    pki = await generateCaSigned('pve1.example.invalid');
    sim = await startSimulator({ guests: 2, certificate: pki.server });
  });
  afterAll(async () => {
    await sim.stop();
  });

  it('verifies against extra CA certificates (IP address and name)', async () => {
    const c = makeClient({ caCerts: [pki.ca.cert] });
    try {
      expect(await c.version(sim.target({ tlsFingerprint: null }))).toMatchObject({ version: '8.4.1' });
      // by name: SNI + identity check on "localhost", connection to a checked loopback address
      expect(await c.version(sim.target({ host: 'localhost', tlsFingerprint: null }))).toMatchObject({
        version: '8.4.1',
      });
      const r = await c.testConnection(sim.target({ tlsFingerprint: null }));
      expect(r).toMatchObject({ ok: true, fingerprint: pki.server.fingerprint });
    } finally {
      await c.close();
    }
  });

  it('without the CA the same certificate is untrusted', async () => {
    const c = makeClient();
    try {
      const err = await expectCode(c.version(sim.target({ tlsFingerprint: null })), 'PROXMOX_TLS_UNTRUSTED');
      expect(err.extensions['fingerprint']).toBe(pki.server.fingerprint);
    } finally {
      await c.close();
    }
  });

  it('a trusted certificate for another name is untrusted (identity check)', async () => {
    const other = await generateCaSigned('pve9.example.invalid', [], false);
    const wrongName = await startSimulator({ guests: 1, certificate: other.server });
    const c = makeClient({ caCerts: [other.ca.cert] });
    try {
      const err = await expectCode(c.version(wrongName.target({ tlsFingerprint: null })), 'PROXMOX_TLS_UNTRUSTED');
      expect(err.extensions['fingerprint']).toBe(other.server.fingerprint);
      expect(String(err.extensions['detail'])).toMatch(/altname|IP/i);
      expect(wrongName.stats.total).toBe(0);
    } finally {
      await c.close();
      await wrongName.stop();
    }
  });
});

describe('IPv6', () => {
  let sim: Simulator | null = null;
  beforeAll(async () => {
    try {
      sim = await startSimulator({ host: '::1', guests: 2 });
    } catch {
      sim = null; // no IPv6 loopback on this machine
    }
  });
  afterAll(async () => {
    await sim?.stop();
  });

  it('reaches an IPv6 literal host (bracketed in the URL), with and without brackets', async (ctx) => {
    if (!sim) return ctx.skip();
    expect(sim.url).toBe(`https://[::1]:${sim.port}`);
    const c = makeClient();
    try {
      expect(await c.version(sim.target())).toMatchObject({ version: '8.4.1' });
      expect(await c.version(sim.target({ host: '[::1]' }))).toMatchObject({ version: '8.4.1' });
    } finally {
      await c.close();
    }
  });
});
