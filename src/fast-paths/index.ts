import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { WebSocket } from 'ws';
import { schema } from '../api/schema.js';
import type { FastPathPlugins, PvegraphYoga } from '../api/yoga.js';
import type { TokenCheck } from '../auth/authenticate.js';
import type { SubscriptionSink } from '../graphql/context.js';
import type { ErrorMasker } from '../graphql/plugins/mask-errors.js';
import type { Services } from '../services.js';
import { graphqlWsSink } from './graphql-ws-sink.js';
import { PreparedQueries, useLearnPreparedQueries } from './prepared-queries.js';
import { createPreparedQueryPath, type PreparedQueryPath } from './prepared-query-path.js';
import { useShareSubscriptionEvents } from './share-subscription-events.js';

/**
 * Every path around Yoga and graphql-ws, behind one switch (PVEGRAPH_FAST_PATHS, on by
 * default; off, the server is plain Yoga and plain graphql-ws):
 * - the prepared-query HTTP path (prepared-query-path.ts, prepared-queries.ts): a known
 *   document of an authenticated POST is run by graphql-jit without Yoga's HTTP pipeline;
 * - the shared subscription executor (share-subscription-events.ts, graphql-ws-sink.ts): one
 *   execution per event and operation, written straight to the sockets;
 * - the local VMID snapshots (src/vmids/local-snapshots.ts), switched where the VMID store is
 *   built (src/runtime.ts).
 * The anonymous budget (src/http/anonymous-budget.ts) is no fast path: it only refuses, and
 * stays on either way.
 *
 * The prepared path runs no envelop plugin: it does what each of Yoga's plugins would do for
 * the requests it answers. These are the plugins it accounts for (test/foundation/fast-paths.test.ts
 * fails when Yoga's chain gains one that is not listed here):
 * - maskErrors: the same masker (masker.maskResult);
 * - observeOperations: recordOperation, the same metrics and access-log line;
 * - armor, depthBeforeCost, tokenLimitWording, csrfPrevention, disableIntrospection: only
 *   documents Yoga has parsed and validated (with its limits) are prepared, and only JSON
 *   POSTs with Authorization are answered;
 * - errorBodies: a body of a content type Yoga cannot parse (415) never reaches it;
 * - requireViewer: the same refusal (unauthenticated()) and status;
 * - subscriptionCap, endRevokedSubscriptions, shareSubscriptionEvents, endUnansweredStreams,
 *   endSubscriptionsOnShutdown: subscriptions are never prepared (queries and mutations only);
 * - learnPreparedQueries: the fast path's own.
 */
export const PLUGINS_ACCOUNTED_FOR = [
  'maskErrors',
  'observeOperations',
  'armor',
  'depthBeforeCost',
  'tokenLimitWording',
  'csrfPrevention',
  'requireViewer',
  'subscriptionCap',
  'learnPreparedQueries',
  'endRevokedSubscriptions',
  'shareSubscriptionEvents',
  'endUnansweredStreams',
  'errorBodies',
  'disableIntrospection',
  'endSubscriptionsOnShutdown',
] as const;

export interface FastPathsOptions {
  services: Services;
  log: Logger;
  masker: ErrorMasker;
  maxRequestBodyBytes: number;
  /** WS_MAX_BUFFERED_BYTES: past this, a socket that stopped reading ends its subscription. */
  wsMaxBufferedBytes: number;
}

export interface FastPaths {
  /** Their hooks into Yoga's plugin chain. */
  readonly yogaPlugins: FastPathPlugins;
  /** Where a graphql-ws operation's shared subscription events are written. */
  readonly sinkFor: (socket: WebSocket, id: string) => SubscriptionSink;
  /** The prepared-query HTTP path in front of this Yoga. */
  preparedQueryPath(
    yoga: PvegraphYoga,
    checkToken: (req: IncomingMessage, res: ServerResponse) => TokenCheck | Promise<TokenCheck>,
  ): PreparedQueryPath;
}

export function createFastPaths(opts: FastPathsOptions): FastPaths {
  const prepared = new PreparedQueries(schema);
  return {
    yogaPlugins: {
      learnPreparedQueries: useLearnPreparedQueries(prepared),
      shareSubscriptionEvents: useShareSubscriptionEvents(opts.masker),
    },
    sinkFor: (socket, id) => graphqlWsSink(socket, id, opts.wsMaxBufferedBytes),
    preparedQueryPath: (yoga, checkToken) =>
      createPreparedQueryPath({
        yoga,
        prepared,
        checkToken,
        services: opts.services,
        log: opts.log,
        masker: opts.masker,
        maxRequestBodyBytes: opts.maxRequestBodyBytes,
      }),
  };
}
