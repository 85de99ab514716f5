import type { IncomingMessage, ServerResponse } from 'node:http';
import { bearerToken } from '../auth/api-token.js';
import type { Viewer } from '../auth/auth-service.js';
import { ErrorCode } from '../errors.js';
import { rateLimitedMessage } from '../ratelimit/rate-limiter.js';
import type { Services } from '../services.js';
import { budgetKeyOf, type ClientAddressOf } from './client-address.js';
import { corsHeaders, resultMediaType } from './prepared-query-path.js';

/** What the request's token turned out to be, decided once per HTTP request. */
export type TokenCheck =
  | { kind: 'viewer'; viewer: Viewer }
  | { kind: 'anonymous'; authFailure: 'missing' | 'invalid'; charged: boolean }
  /** The token could not be checked (database down). */
  | { kind: 'unchecked'; error: unknown; charged: boolean }
  /** The address has spent its budget: answered 429 already. */
  | { kind: 'refused' };

/** Bodies a refused client may still be sending: past this, the connection is closed instead of drained. */
const MAX_DRAINED_BODY_BYTES = 64 * 1024;

/**
 * What a client without a valid API token may cost. Two things are charged to the budget of
 * its address (RATE_LIMIT_ANONYMOUS_PER_MIN; IPv4 address or IPv6 /64, see client-address.ts),
 * shared by all instances through Redis:
 * - a request Yoga handles without a valid token: a document the prepared path does not know,
 *   a tokenless introspection, GraphiQL's page (~10× a dashboard's cached read: BENCHMARKS.md,
 *   finding 25);
 * - a token looked up in the database and not found (or not checkable): made-up tokens would
 *   otherwise each cost a query.
 * Once an address has spent its budget, such requests are answered 429 `RATE_LIMITED` before
 * Yoga or the database sees them (from memory, until its minute ends).
 *
 * Never charged: a valid token (the user's own budgets apply), CORS preflights (a browser
 * dashboard sends one before its authenticated requests), and a token whose refusal is cached,
 * on a document the prepared path knows (answered 401 there at less than a valid read's cost).
 */
export function createAnonymousBudget(services: Pick<Services, 'auth' | 'rateLimiter' | 'metrics'>, addressOf: ClientAddressOf) {
  const { auth, rateLimiter, metrics } = services;
  const admitted = metrics.anonymousRequests.labels({ outcome: 'admitted' });
  const refused = metrics.anonymousRequests.labels({ outcome: 'refused' });
  // Both series exist from the start, so a dashboard's rate() sees the first refusal.
  admitted.inc(0);
  refused.inc(0);
  const enabled = rateLimiter.limits('anonymous');

  const refuse = (req: IncomingMessage, res: ServerResponse, retryAfterSeconds: number): { kind: 'refused' } => {
    refused.inc();
    answer429(req, res, retryAfterSeconds);
    return { kind: 'refused' };
  };

  return {
    /**
     * The request's viewer, checked once for both paths. Answers 429 itself (kind `refused`)
     * when a database lookup would be charged to an address that has spent its budget.
     */
    async checkToken(req: IncomingMessage, res: ServerResponse, keyOf: () => string): Promise<TokenCheck> {
      const token = bearerToken(req.headers.authorization);
      if (!token) return { kind: 'anonymous', authFailure: 'missing', charged: false };
      const fromCache = !enabled || auth.answersFromCache(token);
      if (!fromCache) {
        const spent = rateLimiter.spentFor('anonymous', keyOf());
        if (spent > 0) return refuse(req, res, spent);
      }
      let viewer;
      try {
        viewer = await auth.verify(token);
      } catch (error) {
        if (!enabled) return { kind: 'unchecked', error, charged: false };
        const retryAfter = await rateLimiter.take('anonymous', keyOf());
        return retryAfter > 0 ? refuse(req, res, retryAfter) : { kind: 'unchecked', error, charged: true };
      }
      if (viewer) return { kind: 'viewer', viewer };
      if (fromCache) return { kind: 'anonymous', authFailure: 'invalid', charged: false };
      const retryAfter = await rateLimiter.take('anonymous', keyOf());
      return retryAfter > 0 ? refuse(req, res, retryAfter) : { kind: 'anonymous', authFailure: 'invalid', charged: true };
    },

    /**
     * Charges a request about to be handed to Yoga without a valid token (once: a failed
     * lookup was charged already). False when it has been answered 429 instead.
     */
    async admit(req: IncomingMessage, res: ServerResponse, keyOf: () => string, check: TokenCheck): Promise<boolean> {
      if (check.kind === 'viewer' || check.kind === 'refused' || !enabled || req.method === 'OPTIONS') return true;
      if (!check.charged) {
        const retryAfter = await rateLimiter.take('anonymous', keyOf());
        if (retryAfter > 0) {
          refuse(req, res, retryAfter);
          return false;
        }
      }
      admitted.inc();
      return true;
    },
  };
}

export type AnonymousBudget = ReturnType<typeof createAnonymousBudget>;

/**
 * The key a request's address is charged under, worked out when first needed (it costs ~3 µs,
 * and most requests carry a valid token). Null when the client is gone already. Called before
 * anything awaits: reading the peer's address then makes Node keep it for the socket, which a
 * reset would otherwise take along.
 */
export function budgetKeyOfRequest(req: IncomingMessage, addressOf: ClientAddressOf): (() => string) | null {
  const peer = req.socket.remoteAddress;
  if (peer === undefined) return null;
  let key: string | undefined;
  return () => (key ??= budgetKeyOf(addressOf(req) ?? peer));
}

/**
 * 429 with the GraphQL error a client of this API expects (the one RateLimitedError makes,
 * without building it: a flood is answered here), readable cross-origin.
 */
function answer429(req: IncomingMessage, res: ServerResponse, retryAfterSeconds: number): void {
  const error = { message: rateLimitedMessage('anonymous', retryAfterSeconds), extensions: { code: ErrorCode.RATE_LIMITED, retryAfterSeconds } };
  const body = JSON.stringify({ errors: [error] });
  const headers: Record<string, string | number> = {
    'content-type': `${resultMediaType(req.headers.accept) ?? 'application/json'}; charset=utf-8`,
    'content-length': Buffer.byteLength(body),
    'retry-after': retryAfterSeconds,
    'cache-control': 'no-store',
  };
  const origin = req.headers.origin;
  if (origin !== undefined) Object.assign(headers, corsHeaders(origin));
  // Node drains an unread body to keep the connection; a large or unbounded one is not worth it.
  const length = Number(req.headers['content-length'] ?? 0);
  if (!req.complete && (req.headers['transfer-encoding'] !== undefined || !(length <= MAX_DRAINED_BODY_BYTES))) headers.connection = 'close';
  res.writeHead(429, headers).end(body);
}
