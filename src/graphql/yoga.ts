import { randomUUID } from 'node:crypto';
import { useCSRFPrevention } from '@graphql-yoga/plugin-csrf-prevention';
import { useDisableIntrospection } from '@graphql-yoga/plugin-disable-introspection';
import { GraphQLError } from 'graphql';
import { createYoga, type Plugin, type YogaLogger, type YogaServerInstance } from 'graphql-yoga';
import type { Logger } from 'pino';
import { bearerToken } from '../auth/api-token.js';
import type { RevocationWatch } from '../auth/revocation-watch.js';
import type { UnrefusedTokenCheck } from '../http/anonymous-budget.js';
import type { Metrics } from '../observability/metrics.js';
import type { Services } from '../services.js';
import { type RequestContext, type SubscriptionSink, viewerContext } from './context.js';
import { useEndRevokedSubscriptions } from './plugins/end-revoked-subscriptions.js';
import { useEndUnansweredStreams } from './plugins/end-unanswered-streams.js';
import { useErrorBodies } from './plugins/error-bodies.js';
import { type ErrorMasker, useMaskErrors } from './plugins/mask-errors.js';
import { useObserveOperations } from './plugins/observe-operations.js';
import { useQueryLimits } from './plugins/query-limits.js';
import { useRequireViewer } from './plugins/require-viewer.js';
import { useShareSubscriptionEvents } from './plugins/share-subscription-events.js';
import { useSubscriptionCap } from './plugins/subscription-cap.js';
import { type PreparedQueries, useLearnPreparedQueries } from './prepared-queries.js';
import { schema } from './schema.js';

/**
 * Extra context a transport hands in: its check of the request's token when it has made one
 * (HTTP: src/http/anonymous-budget.ts; WebSocket: per operation), and the request id of its
 * log lines. Without a check, the context factory checks the Authorization header itself.
 */
export interface ServerContext {
  tokenCheck?: UnrefusedTokenCheck;
  requestId?: string;
  /** graphql-ws over ws: where this operation's subscription events are written. */
  sink?: SubscriptionSink;
}

export type PvegraphYoga = YogaServerInstance<ServerContext, RequestContext>;

export interface YogaOptions {
  services: Services;
  log: Logger;
  metrics: Metrics;
  graphiql: boolean;
  introspection: boolean;
  maxRequestBodyBytes: number;
  maxSubscriptionsPerUser: number;
  /** Decides what clients see of errors (shared with the prepared-query path). */
  masker: ErrorMasker;
  /** Filled with the query documents this Yoga has parsed and validated. */
  prepared?: PreparedQueries;
  /** Where SSE subscriptions are watched, so a revoked token's streams end. */
  revocations?: RevocationWatch;
}

/**
 * Limits on what one document may ask for. Generous for dashboards (the deepest real query,
 * me → nodes → containers → node → containers, is 5 levels), tight for abuse. The standard
 * introspection query GraphiQL sends is exempt from depth, introspection from cost
 * (plugins/query-limits.ts).
 */
export const QUERY_LIMITS = {
  maxDepth: 10,
  maxAliases: 15,
  maxTokens: 2_000,
  maxDirectives: 20,
  maxCost: 5_000,
} as const;

export function createPvegraphYoga(opts: YogaOptions): PvegraphYoga {
  const { services, log, metrics, masker } = opts;
  const plugins: Array<Plugin<RequestContext>> = [
    // Before the metrics and access log, whose onExecuteDone then sees the masked codes.
    useMaskErrors(masker),
    // Before the plugins that may stop an operation, so it also sees those (UNAUTHENTICATED, caps).
    useObserveOperations(metrics),
    ...useQueryLimits(QUERY_LIMITS, { fieldSuggestions: opts.introspection }),
    // Browsers can only send these headers after a CORS preflight, so a cross-site form or
    // <img> cannot trigger an operation. Authenticated requests carry Authorization anyway.
    useCSRFPrevention({ requestHeaders: ['authorization', 'x-graphql-yoga-csrf', 'graphql-require-preflight'] }) as Plugin<RequestContext>,
    useRequireViewer(),
    useSubscriptionCap(opts.maxSubscriptionsPerUser),
    ...(opts.prepared ? [useLearnPreparedQueries(opts.prepared)] : []),
    // After the plugins that register with a subscription's stream (its gauge and slot are
    // released through the stream it wraps).
    ...(opts.revocations ? [useEndRevokedSubscriptions(opts.revocations, () => metrics.revokedConnections.inc({ transport: 'sse' }))] : []),
    // Last: replaces the subscribe function (one execution per event and operation).
    useShareSubscriptionEvents(masker),
    useEndUnansweredStreams(),
    useErrorBodies(),
  ];
  if (!opts.introspection) plugins.push(useDisableIntrospection() as Plugin<RequestContext>);

  return createYoga<ServerContext, RequestContext>({
    schema,
    graphqlEndpoint: '/graphql',
    landingPage: false,
    graphiql: opts.graphiql
      ? { title: 'pvegraph', defaultQuery: DEFAULT_QUERY, headers: '{\n  "Authorization": "Bearer <paste your token>"\n}' }
      : false,
    // Self-contained page: the default one loads GraphiQL from unpkg.com, which an operator's
    // network (or this project's CI) may not reach. Its module holds the whole ~9 MB page, so
    // it is loaded on the first browser visit, not by every server (a dashboard never asks).
    renderGraphiQL: async (options) => (await import('@graphql-yoga/render-graphiql')).renderGraphiQL(options),
    logging: yogaLogger(log),
    // useMaskErrors masks every result instead (per shared event, with request ids); Yoga's
    // masking plugin would wrap every subscriber's stream once more.
    maskedErrors: false,
    maxRequestBodySize: opts.maxRequestBodyBytes,
    plugins,
    context: async (initial): Promise<RequestContext> => {
      const requestId = initial.requestId ?? initial.request.headers.get('x-request-id') ?? randomUUID();
      const base = { services, requestId, log };
      const check = initial.tokenCheck;
      switch (check?.kind) {
        case 'viewer':
          return viewerContext(base, check.viewer);
        case 'anonymous':
          return { ...base, viewer: null, authFailure: check.authFailure };
        case 'unchecked':
          // As if the check had failed here: Yoga masks and answers it.
          throw check.error;
      }
      const token = bearerToken(initial.request.headers.get('authorization'));
      if (!token) return { ...base, viewer: null, authFailure: 'missing' };
      const viewer = await services.auth.verify(token);
      return { ...base, viewer, authFailure: viewer ? null : 'invalid' };
    },
  });
}

/**
 * Yoga logs the original of every error its masking replaced. Those are either client errors
 * (whose messages may quote the request's variables, secrets included) or unexpected errors
 * that maskErrors has logged already with their stack: skip GraphQLErrors here.
 */
function yogaLogger(log: Logger): YogaLogger {
  const forward = (level: 'debug' | 'info' | 'warn' | 'error') => (...args: unknown[]) => {
    const [first, ...rest] = args;
    if (first instanceof GraphQLError) return;
    if (first instanceof Error) log[level]({ err: first }, first.message);
    else log[level]({ details: rest.length ? rest : undefined }, String(first));
  };
  return { debug: forward('debug'), info: forward('info'), warn: forward('warn'), error: forward('error') };
}

const DEFAULT_QUERY = `# Welcome to pvegraph. Put your API token into the Headers tab below
# ({"Authorization": "Bearer pvg_…"}), then run:
query Me {
  me {
    id
    name
  }
}
`;
