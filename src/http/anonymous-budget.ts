import type { IncomingMessage, ServerResponse } from 'node:http';
import { bearerToken } from '../auth/api-token.js';
import type { Viewer } from '../auth/auth-service.js';
import { ErrorCode } from '../errors.js';
import { rateLimitedMessage } from '../ratelimit/rate-limiter.js';
import type { Services } from '../services.js';
import { budgetKeyOf, type ClientAddressOf } from './client-address.js';
import { corsHeaders, resultMediaType } from './prepared-query-path.js';

/** What Yoga is handed for an admitted request: the viewer checked here, so it is not checked twice. */
export interface Admitted {
  viewer?: Viewer;
}

/**
 * Requests without a valid API token that Yoga must parse and validate — a document the
 * prepared path does not know, GraphiQL, a tokenless introspection — cost ~10× a dashboard's
 * cached read (BENCHMARKS.md, finding 25), and no user's budget covers them. Each client
 * address (IPv4, or IPv6 /64) gets RATE_LIMIT_ANONYMOUS_PER_MIN of them, shared by all
 * instances through Redis; beyond it they are answered 429 `RATE_LIMITED` here, before Yoga
 * reads them, and refused from memory until the window ends.
 *
 * Not counted: requests with a valid token (they are the user's), CORS preflights (a browser
 * dashboard sends one before its authenticated requests), tokens that could not be checked
 * (the database is down: Yoga answers them as it would), and known documents with a bad token
 * (the prepared path refuses those with a 401 cheaper than a valid read).
 *
 * Returns what to hand Yoga, or null when the request has been answered.
 */
export function createAnonymousBudget(services: Pick<Services, 'auth' | 'rateLimiter' | 'metrics'>, addressOf: ClientAddressOf) {
  const { auth, rateLimiter, metrics } = services;
  const admitted = metrics.anonymousRequests.labels({ outcome: 'admitted' });
  const refused = metrics.anonymousRequests.labels({ outcome: 'refused' });
  // Both series exist from the start, so a dashboard's rate() sees the first refusal.
  admitted.inc(0);
  refused.inc(0);

  return async function admit(req: IncomingMessage, res: ServerResponse): Promise<Admitted | null> {
    if (!rateLimiter.limits('anonymous') || req.method === 'OPTIONS') return {};
    const token = bearerToken(req.headers.authorization);
    if (token) {
      let viewer;
      try {
        viewer = await auth.verify(token);
      } catch {
        return {}; // not checkable now: Yoga's context factory meets the same failure and answers it
      }
      if (viewer) return { viewer };
    }
    const retryAfterSeconds = await rateLimiter.take('anonymous', budgetKeyOf(addressOf(req)));
    if (retryAfterSeconds > 0) {
      refused.inc();
      refuse(req, res, retryAfterSeconds);
      return null;
    }
    admitted.inc();
    return {};
  };
}

/**
 * 429 with the GraphQL error a client of this API expects (the one RateLimitedError makes,
 * without building it: a flood is answered here), readable cross-origin.
 */
function refuse(req: IncomingMessage, res: ServerResponse, retryAfterSeconds: number): void {
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
  res.writeHead(429, headers).end(body);
}
