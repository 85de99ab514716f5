import { lookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';
import ipaddr from 'ipaddr.js';
import { HostNotAllowedError, ProxmoxUnreachableError } from './errors.js';
import { type HostName, parseHostName } from './host-name.js';

/**
 * Host policy for node hosts, applied to the *resolved* addresses right before a
 * connection is opened (the connection then goes to the checked address, so a DNS answer
 * that changes between check and connect cannot smuggle in another address).
 */
export interface HostPolicy {
  allowPrivateHosts: boolean;
  allowLoopbackHosts: boolean;
  /**
   * Loopback endpoints allowed although loopback hosts are not, as `address:port` (IPv6
   * bracketed): `npm run demo` lets its own simulator in this way, and nothing else on the
   * machine (an admin interface on another loopback port stays refused).
   */
  loopbackEndpoints?: readonly string[];
}

/** `address:port` as HostPolicy.loopbackEndpoints lists it. */
export function endpointKey(address: string, port: number): string {
  return `${urlHost(address)}:${port}`;
}

export type AddressClass =
  'public' | 'loopback' | 'private' | 'link-local' | 'metadata' | 'unspecified' | 'multicast' | 'reserved';

function list(entries: Array<[string, number, 'ipv4' | 'ipv6']>): BlockList {
  const bl = new BlockList();
  for (const [net, prefix, family] of entries) {
    if ((family === 'ipv4' && prefix === 32) || (family === 'ipv6' && prefix === 128)) {
      bl.addAddress(net, family);
    } else {
      bl.addSubnet(net, prefix, family);
    }
  }
  return bl;
}

// Order of the checks matters: metadata before private (100.100.100.200 is in 100.64/10,
// fd00:ec2::254 in fc00::/7), link-local before anything else.
const METADATA = list([
  ['169.254.169.254', 32, 'ipv4'],
  ['100.100.100.200', 32, 'ipv4'],
  ['fd00:ec2::254', 128, 'ipv6'],
]);
const LINK_LOCAL = list([
  ['169.254.0.0', 16, 'ipv4'],
  ['fe80::', 10, 'ipv6'],
]);
const UNSPECIFIED = list([
  ['0.0.0.0', 8, 'ipv4'],
  ['::', 128, 'ipv6'],
]);
const MULTICAST = list([
  ['224.0.0.0', 4, 'ipv4'],
  ['ff00::', 8, 'ipv6'],
]);
const RESERVED = list([
  ['240.0.0.0', 4, 'ipv4'], // includes 255.255.255.255
  ['192.0.0.0', 24, 'ipv4'], // IETF protocol assignments
  ['198.18.0.0', 15, 'ipv4'], // benchmarking
  ['::', 96, 'ipv6'], // deprecated IPv4-compatible addresses
  // Translation and tunnelling prefixes embed IPv4 addresses the policy cannot see through
  // reliably (local-use NAT64, 6to4, Teredo, IPv4-translated): never allowed.
  ['64:ff9b:1::', 48, 'ipv6'],
  ['2002::', 16, 'ipv6'],
  ['2001::', 32, 'ipv6'],
  ['::ffff:0:0:0', 96, 'ipv6'],
  ['fec0::', 10, 'ipv6'], // deprecated site-local
]);
const LOOPBACK = list([
  ['127.0.0.0', 8, 'ipv4'],
  ['::1', 128, 'ipv6'],
]);
const PRIVATE = list([
  ['10.0.0.0', 8, 'ipv4'],
  ['172.16.0.0', 12, 'ipv4'],
  ['192.168.0.0', 16, 'ipv4'],
  ['100.64.0.0', 10, 'ipv4'],
  ['fc00::', 7, 'ipv6'],
]);

/** 64:ff9b::/96 only (ipaddr.js's `rfc6052` range also holds the local-use 64:ff9b:1::/48, which stays reserved). */
const WELL_KNOWN_NAT64 = ipaddr.IPv6.parse('64:ff9b::');

/**
 * Canonical form of an IP literal for checking and connecting: IPv4-mapped IPv6
 * (`::ffff:127.0.0.1`, `::ffff:7f00:1`) becomes its IPv4 address; brackets and zone ids
 * are dropped. Returns null when `ip` is not an IP literal (strict forms only: node:net's
 * isIP, not ipaddr.js's, which also reads `127.1` and `0x7f000001`).
 */
export function normalizeIp(ip: string): { address: string; family: 4 | 6 } | null {
  const s = bareHost(ip);
  const family = isIP(s);
  if (family === 4) return { address: s, family: 4 };
  if (family !== 6) return null;
  const zone = s.indexOf('%');
  const v6 = ipaddr.IPv6.parse(zone === -1 ? s : s.slice(0, zone));
  if (v6.isIPv4MappedAddress()) return { address: v6.toIPv4Address().toString(), family: 4 };
  // Well-known NAT64 prefix 64:ff9b::/96: on a DNS64 network it reaches the embedded IPv4
  // address, so it is judged as that address (64:ff9b::7f00:1 is loopback).
  if (v6.match(WELL_KNOWN_NAT64, 96))
    return { address: ipaddr.fromByteArray(v6.toByteArray().slice(12)).toString(), family: 4 };
  return { address: v6.toRFC5952String(), family: 6 };
}

/** Classifies an IP literal (already normalized or not). */
export function classifyAddress(ip: string): AddressClass {
  const n = normalizeIp(ip);
  if (!n) throw new TypeError(`not an IP address: ${ip}`);
  const fam = n.family === 4 ? 'ipv4' : 'ipv6';
  const a = n.address;
  if (METADATA.check(a, fam)) return 'metadata';
  if (LINK_LOCAL.check(a, fam)) return 'link-local';
  if (UNSPECIFIED.check(a, fam)) return 'unspecified';
  if (MULTICAST.check(a, fam)) return 'multicast';
  if (LOOPBACK.check(a, fam)) return 'loopback';
  if (RESERVED.check(a, fam)) return 'reserved';
  if (PRIVATE.check(a, fam)) return 'private';
  return 'public';
}

const REASONS: Record<Exclude<AddressClass, 'public'>, string> = {
  metadata: 'cloud metadata addresses are never allowed',
  'link-local': 'link-local addresses are never allowed',
  unspecified: 'the unspecified address is never allowed',
  multicast: 'multicast addresses are never allowed',
  reserved: 'reserved addresses are never allowed',
  loopback: 'loopback addresses are not allowed (ALLOW_LOOPBACK_NODE_HOSTS=false)',
  private: 'private-range addresses are not allowed (ALLOW_PRIVATE_NODE_HOSTS=false)',
};

/** Why `ip` (reached on `port`, when known) is refused under `policy`, or null when it is allowed. */
export function addressRefusal(ip: string, policy: HostPolicy, port?: number): string | null {
  const c = classifyAddress(ip);
  if (c === 'public') return null;
  if (c === 'loopback' && policy.allowLoopbackHosts) return null;
  if (
    c === 'loopback' &&
    port !== undefined &&
    policy.loopbackEndpoints?.includes(endpointKey(normalizeIp(ip)!.address, port))
  )
    return null;
  if (c === 'private' && policy.allowPrivateHosts) return null;
  return REASONS[c];
}

/** Strips brackets from an IPv6 literal; leaves names alone. */
export function bareHost(host: string): string {
  const h = host.trim();
  return h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
}

/** `host` as it goes in a URL authority (IPv6 literals bracketed). */
export function urlHost(host: string): string {
  const h = bareHost(host);
  return isIP(h) === 6 ? `[${h}]` : h;
}

export interface ResolvedAddress {
  address: string;
  family: 4 | 6;
}

/**
 * Resolves `host` (name or IP literal) and checks every address against the policy.
 * Any refused address refuses the host (a name that resolves to a public and to a
 * loopback address is refused). Throws HostNotAllowedError / ProxmoxUnreachableError.
 */
export async function resolveAllowed(host: string, policy: HostPolicy, port?: number): Promise<ResolvedAddress[]> {
  const h = bareHost(host);
  const name = checkedHost(host, policy, port);
  if (name.kind === 'ip') return [normalizeIp(name.host)!];
  let answers: Array<{ address: string; family: number }>;
  try {
    answers = await lookup(name.host, { all: true, verbatim: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'ERROR';
    throw new ProxmoxUnreachableError(`Cannot resolve host "${h}" (${code}).`, { host: h, cause: code });
  }
  if (answers.length === 0) {
    throw new ProxmoxUnreachableError(`Cannot resolve host "${h}" (no addresses).`, { host: h });
  }
  const out: ResolvedAddress[] = [];
  for (const a of answers) {
    const n = normalizeIp(a.address);
    if (!n) continue;
    const refusal = addressRefusal(n.address, policy, port);
    // The address stays out of the message: it would turn refusals into a way to read
    // internal DNS answers.
    if (refusal) throw new HostNotAllowedError(h, refusal);
    if (!out.some((o) => o.address === n.address)) out.push(n);
  }
  if (out.length === 0) {
    throw new ProxmoxUnreachableError(`Cannot resolve host "${h}" (no usable addresses).`, { host: h });
  }
  return out;
}

/** Synchronous pre-check for IP literals (names are checked when connecting). */
export function assertLiteralAllowed(host: string, policy: HostPolicy, port?: number): void {
  checkedHost(host, policy, port);
}

/** `host` under the one host rule (host-name.ts), an IP literal also under the policy. */
function checkedHost(host: string, policy: HostPolicy, port?: number): HostName {
  const h = bareHost(host);
  const parsed = parseHostName(host);
  if (!parsed) throw new HostNotAllowedError(h, 'it is not a valid host name or IP address');
  if (parsed.kind === 'ip') {
    const literal = normalizeIp(parsed.host)!;
    const refusal = addressRefusal(literal.address, policy, port);
    if (refusal) throw new HostNotAllowedError(h, refusal, literal.address);
  }
  return parsed;
}
