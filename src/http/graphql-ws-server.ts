import { randomUUID } from 'node:crypto';
import type { Server } from 'node:http';
import { type DocumentNode, type ExecutionArgs, GraphQLError, type GraphQLSchema } from 'graphql';
import { useServer } from 'graphql-ws/use/ws';
import { WebSocket, WebSocketServer } from 'ws';
import type { PvegraphYoga } from '../api/yoga.js';
import { bearerToken } from '../auth/api-token.js';
import type { Authenticate, UnrefusedTokenCheck } from '../auth/authenticate.js';
import type { Viewer } from '../auth/auth-service.js';
import type { RevocationWatch } from '../auth/revocation-watch.js';
import type { Config } from '../config/config.js';
import type { SubscriptionSink } from '../graphql/context.js';
// Over HTTP, Yoga's masking adds codes; WebSocket parse/validation errors bypass it.
import { withCode } from '../graphql/plugins/mask-errors.js';
import { UnauthenticatedError } from '../errors.js';
import type { Metrics } from '../observability/metrics.js';
import { rateLimitedMessage } from '../ratelimit/rate-limiter.js';

/** WebSocket close codes we send ourselves (graphql-ws names its own). */
export const enum WsCloseCode {
  /** Over the per-user connection cap (RFC 6455 policy violation). */
  PolicyViolation = 1008,
  /** Bad or missing token (graphql-ws Forbidden). */
  Forbidden = 4403,
  /**
   * The address has spent its budget for requests without a valid token (anonymous-budget.ts):
   * RFC 6455's "try again later", which graphql-ws's client retries (its 4429 would be fatal).
   */
  TryAgainLater = 1013,
}

export interface GraphqlWsServerOptions {
  server: Server;
  yoga: PvegraphYoga;
  authenticate: Authenticate;
  revocations: RevocationWatch;
  metrics: Metrics;
  config: Pick<Config, 'maxRequestBodyBytes' | 'wsMaxConnectionsPerUser'>;
  /**
   * Where an operation's subscription events may be written directly (the shared subscription
   * executor, src/fast-paths/); absent, graphql-ws writes every event itself.
   */
  sinkFor?: ((socket: WebSocket, id: string) => SubscriptionSink) | undefined;
}

export interface GraphqlWsServer {
  readonly wss: WebSocketServer;
  /** Settles once no operation streams any more (each ended stream's `complete` is sent first). */
  streamsEnded(): Promise<void>;
}

/** What Yoga's envelop hands a graphql-ws operation. */
interface Enveloped {
  schema: GraphQLSchema;
  execute: (args: ExecutionArgs) => unknown;
  subscribe: (args: ExecutionArgs) => unknown;
  contextFactory: () => Promise<unknown>;
  parse: (source: string) => DocumentNode;
  validate: (schema: GraphQLSchema, document: DocumentNode) => readonly GraphQLError[];
}

type WsExtra = {
  /** Who opened the socket: what its slot in socketsPerUser is counted under (operations use their own check). */
  viewer?: Viewer;
  /** This socket holds a slot in socketsPerUser (released exactly once). */
  counted?: boolean;
};

/**
 * graphql-ws on /graphql: the token is authenticated once per socket (connection_init) and
 * again per operation; every operation goes through Yoga's envelop, so its plugins guard it.
 */
export function createGraphqlWsServer({
  server,
  yoga,
  authenticate,
  revocations,
  metrics,
  config,
  sinkFor,
}: GraphqlWsServerOptions): GraphqlWsServer {
  // Upgrades handed over here rather than `server` given to ws: ws would re-emit the HTTP
  // server's errors (EADDRINUSE) on the WebSocket server, where graphql-ws prints them with a stack.
  const wss = new WebSocketServer({ noServer: true, path: '/graphql', maxPayload: config.maxRequestBodyBytes });
  server.on('upgrade', (req, socket, head) =>
    wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req)),
  );
  /** The operations that stream, per socket: shutdown waits for their `complete`. */
  const streaming = new Map<WebSocket, Set<string>>();
  const whenNoneStreams: Array<() => void> = [];
  const streamEnded = (socket: WebSocket, id?: string) => {
    const ids = streaming.get(socket);
    if (id !== undefined) ids?.delete(id);
    if (id === undefined || ids?.size === 0) streaming.delete(socket);
    if (streaming.size > 0) return;
    for (const resolve of whenNoneStreams.splice(0)) resolve();
  };
  /** Each socket's token: re-checked per operation. */
  const tokens = new WeakMap<WebSocket, string>();
  const socketsPerUser = new Map<string, number>();
  useServer<Record<string, unknown>, WsExtra>(
    {
      // Decided once per socket: returning false closes it with 4403 Forbidden.
      onConnect: async (ctx) => {
        const authorization = ctx.connectionParams?.authorization;
        const token = bearerToken(typeof authorization === 'string' ? authorization : null);
        // A token only the database can tell about is charged to the address's budget, as over HTTP.
        const check = await authenticate(token, ctx.extra.request);
        if (check.kind === 'unchecked') throw check.error; // as before: graphql-ws closes with 4500
        if (check.kind === 'refused') {
          // The reason names the budget spent (address or IPv6 /48); it fits a close frame's 123 bytes.
          ctx.extra.socket.close(WsCloseCode.TryAgainLater, rateLimitedMessage(check.bucket, check.retryAfterSeconds));
          return false;
        }
        if (check.kind !== 'viewer') return false;
        const viewer = check.viewer;
        // Closed while the token was being checked: onClose has run already, count nothing.
        if (ctx.extra.socket.readyState !== WebSocket.OPEN) return false;
        const open = socketsPerUser.get(viewer.userId) ?? 0;
        if (open >= config.wsMaxConnectionsPerUser) {
          ctx.extra.socket.close(
            WsCloseCode.PolicyViolation,
            `At most ${config.wsMaxConnectionsPerUser} connections per user`,
          );
          return false;
        }
        socketsPerUser.set(viewer.userId, open + 1);
        metrics.webSockets.inc();
        ctx.extra.viewer = viewer;
        ctx.extra.counted = true;
        tokens.set(ctx.extra.socket, token!);
        const socket = ctx.extra.socket;
        socket.once(
          'close',
          revocations.watch(token!, {
            revoke: () => {
              metrics.revokedConnections.inc({ transport: 'websocket' });
              socket.close(WsCloseCode.Forbidden, 'Forbidden');
            },
          }),
        );
        return true;
      },
      onClose: (ctx) => {
        streamEnded(ctx.extra.socket);
        const userId = ctx.extra.viewer?.userId;
        if (!userId || !ctx.extra.counted) return;
        ctx.extra.counted = false;
        metrics.webSockets.dec();
        const left = (socketsPerUser.get(userId) ?? 1) - 1;
        if (left <= 0) socketsPerUser.delete(userId);
        else socketsPerUser.set(userId, left);
      },
      // Every WebSocket operation goes through Yoga's envelop, so its plugins guard it too.
      onSubscribe: async (ctx, id, payload) => {
        // Authenticated per operation (cached), so a revoked token stops working on open
        // sockets within TOKEN_CACHE_TTL_MS, as it does over HTTP. Charged to nobody: the
        // socket's token was valid when it opened.
        const pending = authenticate(tokens.get(ctx.extra.socket) ?? null, null);
        const check = pending instanceof Promise ? await pending : pending;
        if (check.kind === 'unchecked') throw check.error; // as before: graphql-ws closes with 4500
        if (check.kind !== 'viewer') {
          ctx.extra.socket.close(WsCloseCode.Forbidden, 'Forbidden');
          return [new UnauthenticatedError('The API token is not valid (unknown or revoked).')];
        }
        const tokenCheck: UnrefusedTokenCheck = check;
        const { schema, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
          ...ctx,
          req: ctx.extra.request,
          socket: ctx.extra.socket,
          params: payload,
          tokenCheck,
          transport: 'websocket',
          requestId: randomUUID(),
          ...(sinkFor ? { sink: sinkFor(ctx.extra.socket, id) } : {}),
          // envelop types what it hands back loosely (any): these are graphql-js's own signatures.
        }) as Enveloped;
        let document: DocumentNode;
        try {
          document = parse(payload.query);
        } catch (err) {
          // Syntax errors and the token/depth limits that run while parsing: tell the client.
          if (err instanceof GraphQLError) return [withCode(err, 'GRAPHQL_PARSE_FAILED')];
          throw err;
        }
        let errors: readonly GraphQLError[];
        try {
          errors = validate(schema, document);
        } catch (err) {
          // Some limit rules (graphql-armor's depth) throw instead of reporting.
          if (err instanceof GraphQLError) return [withCode(err, 'GRAPHQL_VALIDATION_FAILED')];
          throw err;
        }
        if (errors.length) return errors.map((e) => withCode(e, 'GRAPHQL_VALIDATION_FAILED'));
        const args: ExecutionArgs & { rootValue: { execute: typeof execute; subscribe: typeof subscribe } } = {
          schema,
          operationName: payload.operationName,
          document,
          variableValues: payload.variables,
          contextValue: await contextFactory(),
          rootValue: { execute, subscribe },
        };
        return args;
      },
      onOperation: (ctx, id, _payload, _args, result) => {
        if (!(Symbol.asyncIterator in result)) return;
        const ids = streaming.get(ctx.extra.socket) ?? new Set<string>();
        streaming.set(ctx.extra.socket, ids.add(id));
      },
      // Called after a stream ended, right before its `complete` is sent.
      onComplete: (ctx, id) => streamEnded(ctx.extra.socket, id),
      // Yoga's envelop execute/subscribe (handed over in onSubscribe), so its plugins run.
      execute: (args) => (args.rootValue as { execute: (a: ExecutionArgs) => unknown }).execute(args) as never,
      subscribe: (args) => (args.rootValue as { subscribe: (a: ExecutionArgs) => unknown }).subscribe(args) as never,
    },
    wss,
  );
  return {
    wss,
    streamsEnded: () =>
      streaming.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => whenNoneStreams.push(resolve)),
  };
}
