import type { IncomingMessage, ServerResponse } from 'node:http';
import { bearerToken } from '../auth/api-token.js';
import type { AnonymousBucket, Authenticate, LookupBudget, Refused, TokenCheck } from '../auth/authenticate.js';
import { ErrorCode } from '../errors.js';
import { rateLimitedMessage } from '../ratelimit/rate-limiter.js';
import type { Services } from '../services.js';
import { budgetKeyOf, type ClientAddressOf, siteKeyOf } from './client-address.js';
import { corsHeaders } from '../api/yoga-answers.js';
import { resultMediaType } from '../graphql/result-media-type.js';

/** The refusal for a bucket's answer (seconds until a unit is back; 0: there is one). */
const refusal = (bucket: AnonymousBucket, retryAfterSeconds: number): Refused | null =>
  retryAfterSeconds > 0 ? { kind: 'refused', retryAfterSeconds, bucket } : null;

/** Bodies a refused client may still be sending: past this, the connection is closed instead of drained. */
const MAX_DRAINED_BODY_BYTES = 64 * 1024;

export interface AnonymousBudget extends LookupBudget {
  /**
   * Charges a request about to be handed to Yoga without a valid token (once: a lookup in
   * vain was charged already). False when it has been answered 429 instead.
   */
  admit(req: IncomingMessage, res: ServerResponse, check: TokenCheck): Promise<boolean>;
}

/**
 * What a client without a valid API token may cost. Two things are charged to the budget of
 * its address (RATE_LIMIT_ANONYMOUS_PER_MIN; IPv4 address or IPv6 /64, see client-address.ts;
 * an IPv6 /64 also to its /48's, ANONYMOUS_SITE_BUDGETS times as large), shared by all
 * instances through Redis:
 * - a request Yoga handles without a valid token: a document the prepared path does not know,
 *   a tokenless introspection, GraphiQL's page (~10× a dashboard's cached read: BENCHMARKS.md,
 *   finding 25);
 * - a token looked up in the database in vain (HTTP or WebSocket): made-up tokens would
 *   otherwise each cost a query.
 * Past the budget such requests are refused before Yoga or the database sees them (429, or a
 * WebSocket closed with 1013, try again later), from memory until the address's minute ends.
 *
 * Never charged: a token verify answers from its cache (a dashboard in use stays cached; a
 * made-up token's refusal is cached for seconds, and on a document the prepared path knows it
 * is answered 401 there for less than a valid read), CORS preflights without a token.
 */
export function createAnonymousBudget(
  services: Pick<Services, 'rateLimiter' | 'metrics'>,
  addressOf: ClientAddressOf,
): AnonymousBudget {
  const { rateLimiter, metrics } = services;
  const charged = metrics.anonymousRequests.labels({ outcome: 'charged' });
  const refused = metrics.anonymousRequests.labels({ outcome: 'refused' });
  // Both series exist from the start, so a dashboard's rate() sees the first refusal.
  charged.inc(0);
  refused.inc(0);
  const enabled = rateLimiter.limits('anonymous');
  /**
   * The key a request's address is charged under, worked out only for requests that are
   * charged (~3 µs, and even reading the peer's address cost the hot path ~5 µs per request).
   * A client that reset its connection before may have taken its address along: its requests
   * share one key, and nobody reads their answers.
   */
  const keyOf = (req: IncomingMessage) => budgetKeyOf(addressOf(req) ?? 'unknown');

  /**
   * Spends one unit of the address's budget, and for an IPv6 /64 one of its /48's too: null, or
   * the refusal with the seconds until there is one.
   */
  async function charge(key: string): Promise<Refused | null> {
    const site = siteKeyOf(key);
    // A site this instance has seen spent is refused from memory, before any /64 of it is
    // asked; a /64 that refuses spends nothing of its /48's (its neighbours keep their share).
    const result =
      spentSite(site) ??
      refusal('anonymous', await rateLimiter.take('anonymous', key)) ??
      (site === null ? null : refusal('anonymousSite', await rateLimiter.take('anonymousSite', site)));
    (result ? refused : charged).inc();
    return result;
  }

  const spentSite = (site: string | null) =>
    site === null ? null : refusal('anonymousSite', rateLimiter.spentFor('anonymousSite', site));

  /** The refusal this instance remembers for the address's /48 or the address (in charge()'s order), without asking Redis. */
  const spentRefusal = (key: string): Refused | null =>
    spentSite(siteKeyOf(key)) ?? refusal('anonymous', rateLimiter.spentFor('anonymous', key));

  return {
    /** Whether the budget is on (RATE_LIMIT_ANONYMOUS_PER_MIN > 0). */
    enabled,

    /** For authenticate(): what this instance remembers of the address's spent budget. */
    spentRefusal(req: IncomingMessage): Refused | null {
      const spent = spentRefusal(keyOf(req));
      if (spent) refused.inc();
      return spent;
    },

    /** For authenticate(): a token lookup in vain. */
    charge: (req: IncomingMessage) => charge(keyOf(req)),

    /**
     * Charges a request about to be handed to Yoga without a valid token (once: a lookup in
     * vain was charged already). False when it has been answered 429 instead.
     */
    async admit(req: IncomingMessage, res: ServerResponse, check: TokenCheck): Promise<boolean> {
      if (!enabled || check.kind === 'viewer' || check.kind === 'refused' || check.charged || req.method === 'OPTIONS')
        return true;
      const spent = await charge(keyOf(req));
      if (!spent) return true;
      answer429(req, res, spent);
      return false;
    },
  };
}

/**
 * An HTTP request's token through authenticate(), charged to its address; a refusal is
 * answered 429 here. Synchronous when the answer is cached.
 */
export function checkHttpToken(
  authenticate: Authenticate,
  req: IncomingMessage,
  res: ServerResponse,
): TokenCheck | Promise<TokenCheck> {
  const check = authenticate(bearerToken(req.headers.authorization), req);
  if (!(check instanceof Promise)) return check; // cached: no extra tick
  return check.then((c) => {
    if (c.kind === 'refused') answer429(req, res, c);
    return c;
  });
}

/**
 * 429 with the GraphQL error a client of this API expects (the one RateLimitedError makes,
 * without building it: a flood is answered here), readable cross-origin.
 */
function answer429(
  req: IncomingMessage,
  res: ServerResponse,
  { retryAfterSeconds, bucket }: { retryAfterSeconds: number; bucket: AnonymousBucket },
): void {
  const error = {
    message: rateLimitedMessage(bucket, retryAfterSeconds),
    extensions: { code: ErrorCode.RATE_LIMITED, retryAfterSeconds },
  };
  const body = JSON.stringify({ errors: [error] });
  const headers: Record<string, string | number> = {
    'content-type': `${resultMediaType(req.headers.accept) ?? 'application/json'}; charset=utf-8`,
    'content-length': Buffer.byteLength(body),
    'retry-after': retryAfterSeconds,
    'cache-control': 'no-store',
  };
  if (req.headers.origin !== undefined) Object.assign(headers, corsHeaders(req.headers));
  // Node drains an unread body to keep the connection; a large or unbounded one is not worth it.
  const length = Number(req.headers['content-length'] ?? 0);
  if (!req.complete && (req.headers['transfer-encoding'] !== undefined || !(length <= MAX_DRAINED_BODY_BYTES)))
    headers.connection = 'close';
  res.writeHead(429, headers).end(body);
}
