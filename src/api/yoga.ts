import { randomUUID } from 'node:crypto';
import { useCSRFPrevention } from '@graphql-yoga/plugin-csrf-prevention';
import { useDisableIntrospection } from '@graphql-yoga/plugin-disable-introspection';
import { GraphQLError } from 'graphql';
import { createYoga, type Plugin, type YogaLogger, type YogaServerInstance } from 'graphql-yoga';
import type { Logger } from 'pino';
import { bearerToken } from '../auth/api-token.js';
import type { Authenticate, UnrefusedTokenCheck } from '../auth/authenticate.js';
import type { RevocationWatch } from '../auth/revocation-watch.js';
import type { Metrics } from '../observability/metrics.js';
import type { Services } from '../services.js';
import { type RequestContext, type SubscriptionSink, viewerContext } from '../graphql/context.js';
import { useEndRevokedSubscriptions } from '../graphql/plugins/end-revoked-subscriptions.js';
import { useEndSubscriptionsOnShutdown } from '../graphql/plugins/end-subscriptions-on-shutdown.js';
import { useEndUnansweredStreams } from '../graphql/plugins/end-unanswered-streams.js';
import { useErrorBodies } from '../graphql/plugins/error-bodies.js';
import { type ErrorMasker, useMaskErrors } from '../graphql/plugins/mask-errors.js';
import { useObserveOperations } from '../graphql/plugins/observe-operations.js';
import { useQueryLimits } from '../graphql/plugins/query-limits.js';
import { useRequireViewer } from '../graphql/plugins/require-viewer.js';
import { useSubscriptionCap } from '../graphql/plugins/subscription-cap.js';
import { schema } from './schema.js';

/**
 * Extra context a transport hands in: its check of the request's token when it has made one
 * (with the same authenticate()), and the request id of its log lines. Without a check, the
 * context factory authenticates the Authorization header itself.
 */
export interface ServerContext {
  tokenCheck?: UnrefusedTokenCheck;
  requestId?: string;
  /** graphql-ws over ws: where this operation's subscription events are written. */
  sink?: SubscriptionSink;
  /** Set by the WebSocket server: its operations have no HTTP request of their own. */
  transport?: 'websocket';
}

export type PvegraphYoga = YogaServerInstance<ServerContext, RequestContext>;

export interface YogaOptions {
  services: Services;
  /** The one token check, shared with the transports. */
  authenticate: Authenticate;
  log: Logger;
  metrics: Metrics;
  graphiql: boolean;
  introspection: boolean;
  maxRequestBodyBytes: number;
  maxSubscriptionsPerUser: number;
  /** Decides what clients see of errors (shared with the prepared-query path). */
  masker: ErrorMasker;
  /** Where SSE subscriptions are watched, so a revoked token's streams end. */
  revocations?: RevocationWatch;
  /** Aborted on shutdown: every subscription stream then completes. */
  shutdown?: AbortSignal;
  /** The fast paths' hooks into the chain (src/fast-paths/); without them Yoga runs plainly. */
  fastPaths?: FastPathPlugins;
}

/** Where the fast paths (src/fast-paths/) hook into Yoga's plugin chain. */
export interface FastPathPlugins {
  /** Learns the documents Yoga has parsed and validated (the prepared-query path runs them). */
  learnPreparedQueries: Plugin<RequestContext>;
  /** Replaces the subscribe function: one execution per event and operation. */
  shareSubscriptionEvents: Plugin<RequestContext>;
}

/** One plugin of the chain, named so the fast paths can say which of them they honour. */
export interface NamedPlugin {
  readonly name: string;
  readonly plugin: Plugin<RequestContext>;
}

/**
 * Limits on what one document may ask for. Generous for dashboards (the deepest real query,
 * me → nodes → containers → node → containers, is 5 levels), tight for abuse. The standard
 * introspection query GraphiQL sends is exempt from depth, introspection from cost
 * (graphql/plugins/query-limits.ts).
 */
export const QUERY_LIMITS = {
  maxDepth: 10,
  maxAliases: 15,
  maxTokens: 2_000,
  maxDirectives: 20,
  maxCost: 5_000,
} as const;

/** The plugin chain, in order. */
export function pvegraphPlugins(
  opts: Omit<YogaOptions, 'authenticate' | 'log' | 'graphiql' | 'maxRequestBodyBytes' | 'services'>,
): NamedPlugin[] {
  const { metrics, masker } = opts;
  const plugins: NamedPlugin[] = [
    // Before the metrics and access log, whose onExecuteDone then sees the masked codes.
    { name: 'maskErrors', plugin: useMaskErrors(masker) },
    // Before the plugins that may stop an operation, so it also sees those (UNAUTHENTICATED, caps).
    { name: 'observeOperations', plugin: useObserveOperations(metrics) },
    // graphql-armor's limits (armor), a depth overrun told as one rather than as its cost
    // (depthBeforeCost), the token limit told like the others (tokenLimitWording: after armor,
    // whose parser it wraps).
    ...Object.entries(useQueryLimits(QUERY_LIMITS, { fieldSuggestions: opts.introspection })).map(([name, plugin]) => ({
      name,
      plugin,
    })),
    // Browsers can only send these headers after a CORS preflight, so a cross-site form or
    // <img> cannot trigger an operation. Authenticated requests carry Authorization anyway.
    {
      name: 'csrfPrevention',
      plugin: useCSRFPrevention({
        requestHeaders: ['authorization', 'x-graphql-yoga-csrf', 'graphql-require-preflight'],
      }) as Plugin<RequestContext>,
    },
    { name: 'requireViewer', plugin: useRequireViewer() },
    { name: 'subscriptionCap', plugin: useSubscriptionCap(opts.maxSubscriptionsPerUser) },
  ];
  if (opts.fastPaths) plugins.push({ name: 'learnPreparedQueries', plugin: opts.fastPaths.learnPreparedQueries });
  // After the plugins that register with a subscription's stream (its gauge and slot are
  // released through the stream it wraps).
  if (opts.revocations) {
    const ended = () => metrics.revokedConnections.inc({ transport: 'sse' });
    plugins.push({ name: 'endRevokedSubscriptions', plugin: useEndRevokedSubscriptions(opts.revocations, ended) });
  }
  // Last but one: replaces the subscribe function (one execution per event and operation).
  if (opts.fastPaths) plugins.push({ name: 'shareSubscriptionEvents', plugin: opts.fastPaths.shareSubscriptionEvents });
  plugins.push({ name: 'endUnansweredStreams', plugin: useEndUnansweredStreams() });
  plugins.push({ name: 'errorBodies', plugin: useErrorBodies() });
  if (!opts.introspection)
    plugins.push({ name: 'disableIntrospection', plugin: useDisableIntrospection() as Plugin<RequestContext> });
  // Last: wraps every subscription stream once the others have registered with it.
  if (opts.shutdown)
    plugins.push({ name: 'endSubscriptionsOnShutdown', plugin: useEndSubscriptionsOnShutdown(opts.shutdown) });
  return plugins;
}

export function createPvegraphYoga(opts: YogaOptions): PvegraphYoga {
  const { services, log } = opts;
  return createYoga<ServerContext, RequestContext>({
    schema,
    graphqlEndpoint: '/graphql',
    landingPage: false,
    graphiql: opts.graphiql
      ? {
          title: 'pvegraph',
          defaultQuery: DEFAULT_QUERY,
          headers: '{\n  "Authorization": "Bearer <paste your token>"\n}',
        }
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
    plugins: pvegraphPlugins(opts).map((p) => p.plugin),
    context: async (initial): Promise<RequestContext> => {
      const requestId = initial.requestId ?? initial.request.headers.get('x-request-id') ?? randomUUID();
      const base = { services, requestId, log };
      // Charged to nobody: a transport that charges lookups in vain checks before Yoga.
      const pending =
        initial.tokenCheck ?? opts.authenticate(bearerToken(initial.request.headers.get('authorization')), null);
      const check = pending instanceof Promise ? await pending : pending;
      switch (check.kind) {
        case 'viewer':
          return viewerContext(base, check.viewer);
        case 'anonymous':
          return { ...base, viewer: null, authFailure: check.authFailure };
        case 'unchecked':
          // As if the check had failed here: Yoga masks and answers it.
          throw check.error;
        case 'refused':
          // Only a charging check refuses, and that one is made before Yoga.
          throw new Error('a refused token check reached the Yoga context');
      }
    },
  });
}

/**
 * Yoga logs the original of every error its masking replaced. Those are either client errors
 * (whose messages may quote the request's variables, secrets included) or unexpected errors
 * that maskErrors has logged already with their stack: skip GraphQLErrors here.
 */
function yogaLogger(log: Logger): YogaLogger {
  const forward =
    (level: 'debug' | 'info' | 'warn' | 'error') =>
    (...args: unknown[]) => {
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
