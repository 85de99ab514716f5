import { describe, expect, it } from 'vitest';
import { nodeHost } from '../../src/nodes/node-validation.js';
import { parseHostName } from '../../src/proxmox/host-name.js';
import { assertLiteralAllowed, normalizeIp, resolveAllowed } from '../../src/proxmox/host-policy.js';
import { expectCode } from './helpers.js';

const ALL_ALLOWED = { allowLoopbackHosts: true, allowPrivateHosts: true };

/** One rule for a Proxmox host: registration (node-validation) and connection (host-policy) answer alike. */
describe('host name rule', () => {
  it.each([
    // [written, stored]
    ['pve.example.com', 'pve.example.com'],
    ['  PVE1.Example.COM ', 'pve1.example.com'],
    ['pve.example.com.', 'pve.example.com.'], // trailing dot kept: no search domains
    ['pve1', 'pve1'],
    ['1pve.example', '1pve.example'],
    ['xn--bcher-kva.example', 'xn--bcher-kva.example'],
    ['bücher.example', 'xn--bcher-kva.example'], // IDN stored as its A-label
    ['10.0.0.1', '10.0.0.1'],
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'], // canonical IPv6
    ['[2001:db8::1]', '2001:db8::1'], // brackets dropped
    [`${'a'.repeat(63)}.example`, `${'a'.repeat(63)}.example`],
    [`${'a.'.repeat(126)}b`, `${'a.'.repeat(126)}b`], // 253 characters
    [`${'a.'.repeat(126)}b.`, `${'a.'.repeat(126)}b.`], // 253 and the trailing dot
  ])('accepts %j as %j, at registration and when connecting', (written, stored) => {
    expect(parseHostName(written)?.host).toBe(stored);
    expect(nodeHost.safeParse(written)).toMatchObject({ success: true, data: stored });
    expect(() => assertLiteralAllowed(written, ALL_ALLOWED)).not.toThrow();
  });

  it.each([
    '',
    '.',
    'pve..example',
    '.pve.example',
    '-pve.example',
    'pve-.example',
    'pve_1.example', // underscores: not in host names (RFC 1123), not in certificates
    'pve example',
    'https://pve.example',
    'pve.example:8006',
    'pve.example/api2',
    `${'a'.repeat(64)}.example`, // label over 63
    `${'a.'.repeat(126)}bc`, // 254 characters
    '[pve.example]', // brackets only around IPv6
    '[10.0.0.1]',
    '127.1', // the resolver would read these as IPv4 addresses
    '0x7f000001',
    '10.0.0',
    'pve.0x10',
    '１２７.０.０.１', // full-width digits map to 127.0.0.1
    '01.2.3.4',
  ])('refuses %j, at registration and when connecting', async (written) => {
    expect(parseHostName(written)).toBeNull();
    expect(nodeHost.safeParse(written).success).toBe(false);
    expect(() => assertLiteralAllowed(written, ALL_ALLOWED)).toThrow(/not a valid host name or IP address|not allowed/);
    await expectCode(resolveAllowed(written, ALL_ALLOWED), 'HOST_NOT_ALLOWED');
  });

  it('judges IPv4-mapped and well-known NAT64 IPv6 as the IPv4 address inside (local-use NAT64 stays IPv6)', () => {
    expect(normalizeIp('::ffff:7f00:1')).toEqual({ address: '127.0.0.1', family: 4 });
    expect(normalizeIp('64:ff9b::a00:1')).toEqual({ address: '10.0.0.1', family: 4 });
    expect(normalizeIp('64:ff9b:1::a00:1')).toEqual({ address: '64:ff9b:1::a00:1', family: 6 });
    expect(parseHostName('FE80::1%eth0')?.host).toBe('fe80::1%eth0'); // written with its zone (and refused by the policy)
    expect(normalizeIp('fe80::1%eth0')).toEqual({ address: 'fe80::1', family: 6 });
    expect(normalizeIp('127.1')).toBeNull();
  });
});
