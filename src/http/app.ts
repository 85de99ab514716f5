import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type ExecutionArgs, GraphQLError } from 'graphql';
import { useServer } from 'graphql-ws/use/ws';
import type { Logger } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { bearerToken, sameSecret } from '../auth/api-token.js';
import type { Viewer } from '../auth/auth-service.js';
import { RevocationWatch } from '../auth/revocation-watch.js';
import type { Config } from '../config/config.js';
// Over HTTP, Yoga's masking adds codes; WebSocket parse/validation errors bypass it.
import { createErrorMasker, withCode } from '../graphql/plugins/mask-errors.js';
import { PreparedQueries } from '../graphql/prepared-queries.js';
import { schema } from '../graphql/schema.js';
import { createPvegraphYoga, type PvegraphYoga } from '../graphql/yoga.js';
import { UnauthenticatedError } from '../errors.js';
import type { Services } from '../services.js';
import { rateLimitedMessage } from '../ratelimit/rate-limiter.js';
import { createAnonymousBudget, type UnrefusedTokenCheck } from './anonymous-budget.js';
import { clientAddressOf } from './client-address.js';
import { checkReadiness } from './health.js';
import { graphqlWsSink } from './graphql-ws-sink.js';
import { ANSWERED, createPreparedQueryPath } from './prepared-query-path.js';

/** WebSocket close codes we send ourselves (graphql-ws names its own). */
export const enum WsCloseCode {
  /** Server shutting down (RFC 6455). */
  GoingAway = 1001,
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

export type AppConfig = Pick<
  Config,
  | 'graphiql'
  | 'introspection'
  | 'maxRequestBodyBytes'
  | 'maxSubscriptionsPerUser'
  | 'wsMaxConnectionsPerUser'
  | 'wsMaxBufferedBytes'
  | 'metricsToken'
  | 'tokenCacheTtlMs'
  | 'trustProxy'
>;

/** How long shutdown waits for in-flight requests and WebSocket close handshakes. */
const SHUTDOWN_GRACE_MS = 10_000;

export interface AppOptions {
  services: Services;
  log: Logger;
  config: AppConfig;
}

export interface App {
  readonly server: Server;
  readonly yoga: PvegraphYoga;
  listen(port: number, host: string): Promise<string>;
  /** Stops accepting, closes WebSockets with 1001, lets in-flight HTTP requests finish. */
  stop(): Promise<void>;
}

type WsExtra = {
  /** Who opened the socket: what its slot in socketsPerUser is counted under (operations use their own verify). */
  viewer?: Viewer;
  /** This socket holds a slot in socketsPerUser (released exactly once). */
  counted?: boolean;
};

export function createApp({ services, log, config }: AppOptions): App {
  const { metrics } = services;
  const prepared = new PreparedQueries(schema);
  const masker = createErrorMasker(log);
  // Sockets and SSE subscriptions of a revoked token are ended too, idle or not: a sweep every
  // fifth of the token cache lifetime ends them within about 1.2 × that lifetime.
  const revocations = new RevocationWatch({
    verify: (token) => services.auth.verify(token),
    intervalMs: Math.max(1_000, config.tokenCacheTtlMs / 5),
    onRevokeFailed: (err) => log.error({ err }, 'could not end a connection of a revoked token'),
  });
  const yoga = createPvegraphYoga({
    revocations,
    prepared,
    masker,
    services,
    log,
    metrics,
    graphiql: config.graphiql,
    introspection: config.introspection,
    maxRequestBodyBytes: config.maxRequestBodyBytes,
    maxSubscriptionsPerUser: config.maxSubscriptionsPerUser,
  });

  const addressOf = clientAddressOf(config.trustProxy);
  const budget = createAnonymousBudget(services, addressOf);
  const tryPreparedQuery = createPreparedQueryPath({
    checkToken: budget.checkHttp,
    yoga,
    prepared,
    services,
    log,
    masker,
    maxRequestBodyBytes: config.maxRequestBodyBytes,
  });

  const server = createServer((req, res) => {
    const requestId = requestIdOf(req);
    res.setHeader('x-request-id', requestId);
    const route = routeOf(req);
    res.once('finish', () => metrics.httpRequests.inc({ route, status: `${Math.floor(res.statusCode / 100)}xx` }));
    void handle(route, requestId, req, res).catch((err: unknown) => {
      log.error({ err, requestId }, 'unhandled error in HTTP handler');
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error');
    });
  });

  async function handle(route: string, requestId: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    switch (route) {
      case '/healthz':
        return sendJson(res, 200, { status: 'ok' });
      case '/readyz': {
        const readiness = await checkReadiness(services);
        return sendJson(res, readiness.ready ? 200 : 503, readiness);
      }
      case '/metrics': {
        if (config.metricsToken && !sameSecret(bearerToken(req.headers.authorization) ?? '', config.metricsToken)) {
          res.writeHead(401, { 'www-authenticate': 'Bearer' }).end();
          return;
        }
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        res.end(await metrics.registry.metrics());
        return;
      }
      case '/':
        res.writeHead(302, { location: '/graphql' }).end();
        return;
      default: {
        if (route !== '/graphql') return handOverToYoga(req, res, requestId, undefined);
        const handOver = await tryPreparedQuery(req, res, requestId);
        if (handOver !== ANSWERED) await handOverToYoga(req, res, requestId, handOver.check);
      }
    }
  }

  /** What the prepared path did not answer: charged to the address's budget when it must be, then Yoga's. */
  async function handOverToYoga(req: IncomingMessage, res: ServerResponse, requestId: string, checked: UnrefusedTokenCheck | undefined): Promise<void> {
    // The prepared path may have checked the token already (once it knew the document). With
    // the budget off and no check yet, Yoga's context factory checks it as it always did.
    const pending = checked ?? (budget.enabled ? budget.checkHttp(req, res) : undefined);
    const check = pending instanceof Promise ? await pending : pending;
    if (check?.kind === 'refused') return; // answered 429 by the check
    if (check && !(await budget.admit(req, res, check))) return;
    await yoga.handle(req, res, { requestId, ...(check ? { tokenCheck: check } : {}) });
  }

  const wss = new WebSocketServer({ server, path: '/graphql', maxPayload: config.maxRequestBodyBytes });
  /** Each socket's token: re-checked per operation. */
  const tokens = new WeakMap<WebSocket, string>();
  const socketsPerUser = new Map<string, number>();
  useServer<Record<string, unknown>, WsExtra>(
    {
      // Decided once per socket: returning false closes it with 4403 Forbidden.
      onConnect: async (ctx) => {
        const token = bearerToken(String(ctx.connectionParams?.authorization ?? ''));
        // A token only the database can tell about is charged to the address's budget, as over HTTP.
        const check = await budget.checkWebSocket(ctx.extra.request, token);
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
          ctx.extra.socket.close(WsCloseCode.PolicyViolation, `At most ${config.wsMaxConnectionsPerUser} connections per user`);
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
        // Verified per operation (cached), so a revoked token stops working on open sockets
        // within TOKEN_CACHE_TTL_MS, as it does over HTTP.
        const token = tokens.get(ctx.extra.socket);
        const viewer = token ? await services.auth.verify(token) : null;
        if (!viewer) {
          ctx.extra.socket.close(WsCloseCode.Forbidden, 'Forbidden');
          return [new UnauthenticatedError('The API token is not valid (unknown or revoked).')];
        }
        const { schema, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
          ...ctx,
          req: ctx.extra.request,
          socket: ctx.extra.socket,
          params: payload,
          tokenCheck: { kind: 'viewer', viewer },
          requestId: randomUUID(),
          // A subscription's events are written to the socket directly (share-subscription-events).
          sink: graphqlWsSink(ctx.extra.socket, id, config.wsMaxBufferedBytes),
        });
        let document;
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
      // Yoga's envelop execute/subscribe (handed over in onSubscribe), so its plugins run.
      execute: (args) => (args.rootValue as { execute: (a: ExecutionArgs) => unknown }).execute(args) as never,
      subscribe: (args) => (args.rootValue as { subscribe: (a: ExecutionArgs) => unknown }).subscribe(args) as never,
    },
    wss,
  );

  return {
    server,
    yoga,
    listen(port, host) {
      return new Promise((resolve, reject) => {
        server.once('error', reject);
        server.listen(port, host, () => {
          server.off('error', reject);
          const addr = server.address() as AddressInfo;
          const h = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
          resolve(`http://${h}:${addr.port}`);
        });
      });
    },
    async stop() {
      revocations.stop();
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // In-flight requests finish; sockets and connections still open after the grace period
      // (a peer that never completes the close handshake) are cut.
      const grace = setTimeout(() => {
        for (const client of wss.clients) client.terminate();
        server.closeAllConnections();
      }, SHUTDOWN_GRACE_MS);
      for (const client of wss.clients) client.close(WsCloseCode.GoingAway, 'server shutting down');
      server.closeIdleConnections();
      await Promise.all([closed, new Promise<void>((resolve) => wss.close(() => resolve()))]);
      clearTimeout(grace);
    },
  };
}

const KNOWN_ROUTES = new Set(['/healthz', '/readyz', '/metrics', '/', '/graphql']);

/** The path, or "other": metric labels must stay a small fixed set. */
function routeOf(req: IncomingMessage): string {
  const path = (req.url ?? '/').split('?')[0]!;
  return KNOWN_ROUTES.has(path) ? path : 'other';
}

function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && /^[\w.-]{1,128}$/.test(given) ? given : randomUUID();
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}
