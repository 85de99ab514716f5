import type { Logger } from 'pino';
import type { Viewer } from '../auth/auth-service.js';
import type { Services } from '../services.js';

/**
 * What every resolver gets. `viewer` is never null inside a resolver: the `useRequireViewer`
 * plugin stops any operation that reaches a resolver without a valid token (HTTP and
 * WebSocket alike), so resolvers need no check of their own.
 */
export interface GraphQLContext {
  viewer: Viewer;
  services: Services;
  requestId: string;
  log: Logger;
}

/** The context before authentication is settled (what Yoga's context factory builds). */
export interface RequestContext extends Omit<GraphQLContext, 'viewer'> {
  viewer: Viewer | null;
  /** Why `viewer` is null: no token, or a token that does not verify. */
  authFailure: 'missing' | 'invalid' | null;
  /** Given by a transport that can write a subscription's events itself (graphql-ws over ws). */
  sink?: SubscriptionSink;
  /** 'websocket' for an operation of a graphql-ws socket; absent over HTTP (SSE included). */
  transport?: 'websocket';
}

/**
 * Where a subscription's events can go without a promise and a JSON.stringify per subscriber
 * (src/fast-paths/share-subscription-events.ts): the transport writes one already-serialised ExecutionResult as
 * this operation's next message. Throws to end the subscription with that error (a client
 * that stopped reading).
 */
export interface SubscriptionSink {
  next(serializedResult: string): void;
}

/** The context of an operation whose viewer the transport has authenticated already. */
export function viewerContext(base: Omit<GraphQLContext, 'viewer'>, viewer: Viewer): RequestContext {
  // Spelled out rather than spread: built per request on the hot path, and a literal is cheaper.
  return { services: base.services, requestId: base.requestId, log: base.log, viewer, authFailure: null };
}
