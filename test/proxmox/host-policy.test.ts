import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  addressRefusal,
  classifyAddress,
  normalizeIp,
  resolveAllowed,
  urlHost,
  type ProxmoxClient,
} from '../../src/proxmox/index.js';
import { startSimulator, type Simulator } from '../../src/sim/index.js';
import { expectCode, makeClient } from './helpers.js';

const ALL_ALLOWED = { allowLoopbackHosts: true, allowPrivateHosts: true };
const DEFAULTS = { allowLoopbackHosts: false, allowPrivateHosts: true }; // the contract's defaults
const STRICT = { allowLoopbackHosts: false, allowPrivateHosts: false };

describe('address classification', () => {
  it.each([
    ['127.0.0.1', 'loopback'],
    ['127.8.9.10', 'loopback'],
    ['::1', 'loopback'],
    ['::ffff:127.0.0.1', 'loopback'],
    ['::ffff:7f00:1', 'loopback'],
    ['[::1]', 'loopback'],
    ['169.254.169.254', 'metadata'],
    ['100.100.100.200', 'metadata'],
    ['fd00:ec2::254', 'metadata'],
    ['::ffff:169.254.169.254', 'metadata'],
    ['169.254.10.20', 'link-local'],
    ['fe80::1', 'link-local'],
    ['febf::1', 'link-local'],
    ['10.1.2.3', 'private'],
    ['172.16.0.1', 'private'],
    ['172.31.255.254', 'private'],
    ['192.168.1.10', 'private'],
    ['100.64.0.1', 'private'],
    ['100.127.255.254', 'private'],
    ['fc00::1', 'private'],
    ['fd12:3456::1', 'private'],
    ['::ffff:10.0.0.1', 'private'],
    ['0.0.0.0', 'unspecified'],
    ['0.1.2.3', 'unspecified'],
    ['::', 'unspecified'],
    ['224.0.0.1', 'multicast'],
    ['239.255.255.250', 'multicast'],
    ['ff02::1', 'multicast'],
    ['255.255.255.255', 'reserved'],
    ['8.8.8.8', 'public'],
    ['172.32.0.1', 'public'],
    ['100.128.0.1', 'public'],
    ['2001:db8::1', 'public'],
    ['2a01:4f8::1', 'public'],
  ])('%s is %s', (ip, cls) => {
    expect(classifyAddress(ip)).toBe(cls);
  });

  it('maps IPv4-mapped IPv6 to IPv4 and brackets IPv6 in URLs', () => {
    expect(normalizeIp('::FFFF:192.168.0.1')).toEqual({ address: '192.168.0.1', family: 4 });
    expect(normalizeIp('[2001:DB8::1]')).toEqual({ address: '2001:db8::1', family: 6 });
    expect(normalizeIp('pve.example.com')).toBeNull();
    expect(urlHost('::1')).toBe('[::1]');
    expect(urlHost('[::1]')).toBe('[::1]');
    expect(urlHost('10.0.0.1')).toBe('10.0.0.1');
    expect(urlHost('pve.example.com')).toBe('pve.example.com');
  });

  it('applies the switches: loopback and private only when allowed, the rest never', () => {
    expect(addressRefusal('127.0.0.1', DEFAULTS)).toMatch(/loopback/);
    expect(addressRefusal('127.0.0.1', ALL_ALLOWED)).toBeNull();
    expect(addressRefusal('10.0.0.1', DEFAULTS)).toBeNull();
    expect(addressRefusal('10.0.0.1', STRICT)).toMatch(/private/);
    expect(addressRefusal('::ffff:192.168.1.1', STRICT)).toMatch(/private/);
    expect(addressRefusal('8.8.8.8', STRICT)).toBeNull();
    for (const ip of [
      '169.254.169.254',
      '169.254.1.1',
      'fe80::1',
      'fd00:ec2::254',
      '100.100.100.200',
      '0.0.0.0',
      '::',
      '224.0.0.1',
      'ff02::1',
    ]) {
      expect(addressRefusal(ip, ALL_ALLOWED), ip).not.toBeNull();
    }
  });

  it('resolves names and refuses them by their addresses', async () => {
    await expect(resolveAllowed('localhost', ALL_ALLOWED)).resolves.not.toHaveLength(0);
    await expectCode(resolveAllowed('localhost', DEFAULTS), 'HOST_NOT_ALLOWED');
    await expectCode(resolveAllowed('bad host!', ALL_ALLOWED), 'HOST_NOT_ALLOWED');
    await expectCode(resolveAllowed('', ALL_ALLOWED), 'HOST_NOT_ALLOWED');
  });

  it("does not tell a refused name's internal address (no DNS oracle)", async () => {
    const err = await expectCode(resolveAllowed('localhost', DEFAULTS), 'HOST_NOT_ALLOWED');
    expect(err.message).not.toMatch(/127\.0\.0\.1|::1/);
    expect(err.extensions['address']).toBeUndefined();
  });

  it.each([
    ['64:ff9b::7f00:1', 'loopback'],
    ['64:ff9b::10.0.0.5', 'private'],
    ['64:ff9b::a9fe:a9fe', 'metadata'],
    ['64:ff9b::8.8.8.8', 'public'],
    ['64:ff9b:1::1', 'reserved'],
    ['2002:7f00:1::', 'reserved'],
    ['2001:0:4136:e378::1', 'reserved'],
    ['::ffff:0:7f00:1', 'reserved'],
    ['198.18.0.1', 'reserved'],
  ])('sees through translation prefixes: %s is %s', (ip, expected) => {
    expect(classifyAddress(ip)).toBe(expected);
  });
});

describe('host policy in the client (checked before any connection)', () => {
  let sim: Simulator;
  let client: ProxmoxClient;
  beforeAll(async () => {
    sim = await startSimulator({ guests: 1 });
  });
  afterAll(async () => {
    await sim.stop();
  });
  beforeEach(() => {
    sim.stats.reset();
  });
  afterEach(async () => {
    await client.close();
    // nothing refused may ever have reached the simulator
  });

  it.each(['127.0.0.1', 'localhost', '::ffff:127.0.0.1', '::ffff:7f00:1', '127.0.0.2'])(
    'loopback %s is refused by default',
    async (host) => {
      client = makeClient({ allowLoopbackHosts: false, allowPrivateHosts: true });
      const err = await expectCode(client.version(sim.target({ host })), 'HOST_NOT_ALLOWED');
      expect(err.message).toMatch(/loopback/);
      expect(sim.stats.connections).toBe(0);
      expect(sim.stats.total).toBe(0);
    },
  );

  it.each([
    '169.254.169.254',
    '169.254.0.1',
    'fe80::1',
    'fd00:ec2::254',
    '100.100.100.200',
    '::ffff:169.254.169.254',
    '0.0.0.0',
    '::',
    '224.0.0.1',
    'ff02::1',
  ])('%s is always refused, whatever the switches', async (host) => {
    client = makeClient({ allowLoopbackHosts: true, allowPrivateHosts: true, timeoutMs: 1_000 });
    await expectCode(client.version(sim.target({ host, port: 8006 })), 'HOST_NOT_ALLOWED');
    const r = await client.testConnection(sim.target({ host, port: 8006 }));
    expect(r).toMatchObject({ ok: false, errorCode: 'HOST_NOT_ALLOWED', fingerprint: null });
  });

  it.each(['10.0.0.1', '172.16.5.4', '192.168.1.10', 'fd12:3456::1', '100.64.1.1', '::ffff:10.0.0.1'])(
    'private %s is refused when private hosts are not allowed',
    async (host) => {
      client = makeClient({ allowLoopbackHosts: true, allowPrivateHosts: false, timeoutMs: 1_000 });
      const err = await expectCode(client.version(sim.target({ host, port: 8006 })), 'HOST_NOT_ALLOWED');
      expect(err.message).toMatch(/private/);
    },
  );

  it('a listed loopback endpoint (npm run demo: its simulator) is reached; the same address on another port, or another loopback address, is not', async () => {
    client = makeClient({ allowLoopbackHosts: false, loopbackEndpoints: [`127.0.0.1:${sim.port}`] });
    expect(await client.version(sim.target({ host: '127.0.0.1' }))).toMatchObject({ version: '8.4.1' });
    expect(await client.version(sim.target({ host: 'localhost' }))).toMatchObject({ version: '8.4.1' });
    expect(sim.stats.total).toBe(2);
    const otherPort = sim.port === 65535 ? sim.port - 1 : sim.port + 1;
    await expectCode(client.version(sim.target({ host: '127.0.0.1', port: otherPort })), 'HOST_NOT_ALLOWED');
    await expectCode(client.version(sim.target({ host: '127.0.0.2' })), 'HOST_NOT_ALLOWED');
    expect(sim.stats.total).toBe(2);
  });

  it('IPv4-mapped IPv6 loopback is reached as 127.0.0.1 when loopback is allowed', async () => {
    client = makeClient({ allowLoopbackHosts: true });
    expect(await client.version(sim.target({ host: '::ffff:127.0.0.1' }))).toMatchObject({ version: '8.4.1' });
    expect(sim.stats.total).toBe(1);
  });

  it('refuses strings that are not host names', async () => {
    client = makeClient();
    for (const host of ['', 'http://evil', 'a b', 'x/y', 'host:8006']) {
      await expectCode(client.version(sim.target({ host })), 'HOST_NOT_ALLOWED');
    }
  });
});
