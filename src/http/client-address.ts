import type { IncomingMessage } from 'node:http';
import ipaddr from 'ipaddr.js';
import proxyAddr from 'proxy-addr';

/** The address a request came from, as far as this server can trust it (undefined: the client is gone). */
export type ClientAddressOf = (req: IncomingMessage) => string | undefined;

/**
 * The peer's address, or — when the peer is one of the trusted reverse proxies (TRUST_PROXY) —
 * the nearest address in X-Forwarded-For that is not a trusted proxy (Express's rule, with
 * proxy-addr's trust list). Without trusted proxies the header is ignored: any client could
 * write it. Ports, brackets and zones some proxies write around an address are ignored (else
 * each source port would get a budget of its own, and a trusted hop written with a port would
 * end the walk at the proxy); an entry that is no address at all is charged to the hop that
 * wrote it.
 */
export function clientAddressOf(trusted: readonly string[]): ClientAddressOf {
  if (trusted.length === 0) return (req) => req.socket.remoteAddress;
  const trust = proxyAddr.compile([...trusted]);
  return (req) => {
    if (req.socket.remoteAddress === undefined) return undefined; // reset before it was read
    // Nearest first: the peer, then X-Forwarded-For from right to left.
    const hops = proxyAddr.all(req).map(withoutDecoration);
    for (let i = 0; i < hops.length; i++) {
      if (!ipaddr.isValid(hops[i]!)) return hops[i - 1];
      if (i === hops.length - 1 || !trust(hops[i]!, i)) return hops[i];
    }
    return hops[0];
  };
}

/** An address without the port, brackets or zone some proxies and stacks write around it. */
function withoutDecoration(address: string): string {
  let a = address.trim();
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(a);
  if (bracketed) a = bracketed[1]!;
  else if (/^[\d.]+:\d+$/.test(a)) a = a.slice(0, a.lastIndexOf(':'));
  const zone = a.indexOf('%');
  return zone === -1 ? a : a.slice(0, zone);
}

/**
 * The key a per-address budget is counted under: the IPv4 address (also when written as an
 * IPv4-mapped IPv6 address), or the IPv6 /64. One host, or one customer line, usually holds a
 * whole /64, so a budget per IPv6 address would cost nothing to evade.
 */
export function budgetKeyOf(address: string): string {
  const bare = withoutDecoration(address);
  if (!ipaddr.isValid(bare)) return address;
  const parsed = ipaddr.process(bare);
  if (parsed.kind() === 'ipv4') return parsed.toString();
  const prefix = (parsed as ipaddr.IPv6).parts.slice(0, 4).map((part) => part.toString(16));
  return `${prefix.join(':')}::/64`;
}

/**
 * The IPv6 /48 a /64 budget key belongs to (one site's allocation), which shares a budget of
 * its own: else a client holding a /48 could spread its requests over 65,536 budgets. Null for
 * IPv4 addresses and keys that are no address.
 */
export function siteKeyOf(budgetKey: string): string | null {
  const site = SIXTY_FOUR.exec(budgetKey)?.[1];
  return site === undefined ? null : `${site}::/48`;
}

/** A /64 key exactly as budgetKeyOf writes it (four groups, then `::/64`); the first three are its /48. */
const SIXTY_FOUR = /^([0-9a-f]{1,4}:[0-9a-f]{1,4}:[0-9a-f]{1,4}):[0-9a-f]{1,4}::\/64$/;
