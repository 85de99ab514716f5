import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ExecutionArgs } from 'graphql';
import { useServer } from 'graphql-ws/use/ws';
import type { Logger } from 'pino';
import { WebSocketServer } from 'ws';
import { bearerToken } from '../auth/api-token.js';
import type { Viewer } from '../auth/auth-service.js';
import { createPvegraphYoga, type PvegraphYoga } from '../graphql/yoga.js';
import type { Services } from '../services.js';
import { checkReadiness } from './health.js';

/** graphql-ws close codes we send ourselves (the library names its own). */
export const enum WsCloseCode {
  GoingAway = 1001,
  Forbidden = 4403,
}

export interface AppOptions {
  services: Services;
  log: Logger;
  graphiql?: boolean;
}

export interface App {
  readonly server: Server;
  readonly yoga: PvegraphYoga;
  listen(port: number, host: string): Promise<string>;
  /** Stops accepting, closes WebSockets with 1001, lets in-flight HTTP requests finish. */
  stop(): Promise<void>;
}

type WsExtra = {
  viewer?: Viewer;
};

export function createApp({ services, log, graphiql = true }: AppOptions): App {
  const yoga = createPvegraphYoga({ services, log, graphiql });

  const server = createServer((req, res) => {
    void route(req, res).catch((err: unknown) => {
      log.error({ err }, 'unhandled error in HTTP handler');
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
      res.end('internal error');
    });
  });

  async function route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') return sendJson(res, 200, { status: 'ok' });
    if (path === '/readyz') {
      const readiness = await checkReadiness(services);
      return sendJson(res, readiness.ready ? 200 : 503, readiness);
    }
    if (path === '/' && req.method === 'GET') {
      res.writeHead(302, { location: '/graphql' }).end();
      return;
    }
    await yoga.handle(req, res, { requestId: requestIdOf(req) });
  }

  const wss = new WebSocketServer({ server, path: '/graphql' });
  useServer<Record<string, unknown>, WsExtra>(
    {
      // Decided once per socket: returning false closes it with 4403 Forbidden.
      onConnect: async (ctx) => {
        const token = bearerToken(String(ctx.connectionParams?.authorization ?? ''));
        const viewer = token ? await services.auth.verify(token) : null;
        if (!viewer) return false;
        ctx.extra.viewer = viewer;
        return true;
      },
      // Every WebSocket operation goes through Yoga's envelop, so its plugins guard it too.
      onSubscribe: async (ctx, _id, payload) => {
        const { schema, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
          ...ctx,
          req: ctx.extra.request,
          socket: ctx.extra.socket,
          params: payload,
          wsViewer: ctx.extra.viewer,
          requestId: randomUUID(),
        });
        const args: ExecutionArgs & { rootValue: { execute: typeof execute; subscribe: typeof subscribe } } = {
          schema,
          operationName: payload.operationName,
          document: parse(payload.query),
          variableValues: payload.variables,
          contextValue: await contextFactory(),
          rootValue: { execute, subscribe },
        };
        const errors = validate(args.schema, args.document);
        if (errors.length) return errors;
        return args;
      },
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
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const client of wss.clients) client.close(WsCloseCode.GoingAway, 'server shutting down');
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      server.closeIdleConnections();
      // In-flight requests finish; connections that stay open past the grace period are cut.
      const grace = setTimeout(() => server.closeAllConnections(), 10_000);
      await closed;
      clearTimeout(grace);
    },
  };
}

function requestIdOf(req: IncomingMessage): string {
  const given = req.headers['x-request-id'];
  return typeof given === 'string' && /^[\w.-]{1,128}$/.test(given) ? given : randomUUID();
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}
