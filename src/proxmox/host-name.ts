import { isIP } from 'node:net';
import { domainToASCII } from 'node:url';
import ipaddr from 'ipaddr.js';

/**
 * The one rule for what a Proxmox host may be written as — used when a node is registered
 * (nodes/node-validation.ts) and again right before a connection (host-policy.ts), so the two
 * cannot disagree:
 * - an IP literal in the strict forms only (dotted-quad IPv4; IPv6, optionally in brackets and
 *   with a zone). IPv6 is written in its canonical form (RFC 5952, lower case);
 * - a DNS name of letters, digits and hyphens (RFC 1123; no underscores: certificates may not
 *   carry them and Proxmox's own node names cannot), labels of 1–63 characters not starting or
 *   ending with a hyphen, at most 253 characters besides one optional trailing dot (kept: it
 *   tells the resolver not to try search domains). Lower-cased;
 * - an internationalised name is taken in Unicode or as its A-label (`xn--…`) and kept as the
 *   A-label, which is what DNS and certificates hold;
 * - a name whose last label is all digits or a hex number is refused: the system resolver
 *   (inet_aton) reads `127.1` or `0x7f000001` as an IPv4 address, so it would be a literal that
 *   escaped the literal's rules.
 */
export type HostName = { kind: 'ip'; host: string; family: 4 | 6 } | { kind: 'name'; host: string };

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
/** Labels the resolver would read as (part of) an IPv4 number. */
const NUMERIC_LABEL = /^(\d+|0x[0-9a-f]*)$/;

/** `input` in its one stored form, or null when it is neither a host name nor an IP literal. */
export function parseHostName(input: string): HostName | null {
  const text = input.trim();
  const bracketed = text.startsWith('[') && text.endsWith(']');
  const bare = bracketed ? text.slice(1, -1) : text;
  const family = isIP(bare);
  if (family === 6) return { kind: 'ip', host: canonicalIpv6(bare), family };
  // Brackets are for IPv6 literals only.
  if (bracketed) return null;
  if (family === 4) return { kind: 'ip', host: bare, family };
  const name = isDnsName(bare) ? bare.toLowerCase() : toALabels(bare);
  return name !== null && !NUMERIC_LABEL.test(lastLabel(name)) ? { kind: 'name', host: name } : null;
}

/** Letters, digits and hyphens in labels of 1–63, at most 253 characters besides a trailing dot (ASCII only). */
export function isDnsName(name: string): boolean {
  const absolute = name.endsWith('.') ? name.slice(0, -1) : name;
  if (absolute.length === 0 || absolute.length > 253) return false;
  return absolute.split('.').every((label) => LABEL.test(label.toLowerCase()));
}

/** An internationalised name as A-labels, or null (domainToASCII also reads `0x7f.1` as an address: only non-ASCII input goes to it). */
function toALabels(name: string): string | null {
  if (/^\p{ASCII}*$/u.test(name)) return null;
  const ascii = domainToASCII(name);
  return ascii !== '' && isDnsName(ascii) ? ascii : null;
}

function lastLabel(name: string): string {
  const labels = name.replace(/\.$/, '').split('.');
  return labels[labels.length - 1]!;
}

/** RFC 5952 form (lower case, longest zero run compressed), the zone kept. */
function canonicalIpv6(literal: string): string {
  const zone = literal.indexOf('%');
  const address = zone === -1 ? literal : literal.slice(0, zone);
  return ipaddr.IPv6.parse(address).toRFC5952String() + (zone === -1 ? '' : literal.slice(zone));
}
