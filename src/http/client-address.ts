import type { IncomingMessage } from 'node:http';
import ipaddr from 'ipaddr.js';
import proxyAddr from 'proxy-addr';

/** The address a request came from, as far as this server can trust it. */
export type ClientAddressOf = (req: IncomingMessage) => string;

/**
 * The peer's address, or — when the peer is one of the trusted reverse proxies (TRUST_PROXY) —
 * the nearest address in X-Forwarded-For that is not a trusted proxy (proxy-addr, Express's
 * rule). Without trusted proxies the header is ignored: any client could write it.
 */
export function clientAddressOf(trusted: readonly string[]): ClientAddressOf {
  if (trusted.length === 0) return (req) => req.socket.remoteAddress ?? 'unknown';
  const trust = proxyAddr.compile([...trusted]);
  return (req) => proxyAddr(req, trust);
}

/**
 * The key a per-address budget is counted under: the IPv4 address (also when written as an
 * IPv4-mapped IPv6 address), or the IPv6 /64. One host, or one customer line, usually holds a
 * whole /64, so a budget per IPv6 address would cost nothing to evade.
 */
export function budgetKeyOf(address: string): string {
  if (!ipaddr.isValid(address)) return address;
  const parsed = ipaddr.process(address);
  if (parsed.kind() === 'ipv4') return parsed.toString();
  const prefix = (parsed as ipaddr.IPv6).parts.slice(0, 4).map((part) => part.toString(16));
  return `${prefix.join(':')}::/64`;
}
