import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type { PvegraphYoga } from '../api/yoga.js';
import { bearerToken, sameSecret } from '../auth/api-token.js';
import type { TokenCheck, UnrefusedTokenCheck } from '../auth/authenticate.js';
import type { Config } from '../config/config.js';
import { ANSWERED, type PreparedQueryPath } from '../fast-paths/prepared-query-path.js';
import type { Services } from '../services.js';
import type { AnonymousBudget } from './anonymous-budget.js';
import { checkReadiness } from './health.js';

export interface HttpServerOptions {
  services: Services;
  log: Logger;
  config: Pick<Config, 'metricsToken'>;
  yoga: PvegraphYoga;
  budget: AnonymousBudget;
  /** The request's token (authenticate()); a refusal is answered 429 by it. */
  checkToken: (req: IncomingMessage, res: ServerResponse) => TokenCheck | Promise<TokenCheck>;
  /** The prepared-query fast path (src/fast-paths/), tried before Yoga when the fast paths are on. */
  preparedQueries?: PreparedQueryPath | undefined;
}

/** The HTTP routes: health, readiness, metrics, and /graphql (Yoga, after the anonymous budget). */
export function createHttpServer({
  services,
  log,
  config,
  yoga,
  budget,
  checkToken,
  preparedQueries,
}: HttpServerOptions): Server {
  const { metrics } = services;

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
        if (route !== '/graphql' || !preparedQueries) return handOverToYoga(req, res, requestId, undefined);
        const handOver = await preparedQueries(req, res, requestId);
        if (handOver !== ANSWERED) await handOverToYoga(req, res, requestId, handOver.check);
      }
    }
  }

  /** What the prepared path did not answer: charged to the address's budget when it must be, then Yoga's. */
  async function handOverToYoga(
    req: IncomingMessage,
    res: ServerResponse,
    requestId: string,
    checked: UnrefusedTokenCheck | undefined,
  ): Promise<void> {
    // The prepared path may have checked the token already (once it knew the document). With
    // the budget off and no check yet, Yoga's context factory authenticates as it always did.
    const pending = checked ?? (budget.enabled ? checkToken(req, res) : undefined);
    const check = pending instanceof Promise ? await pending : pending;
    if (check?.kind === 'refused') return; // answered 429 by the check
    if (check && !(await budget.admit(req, res, check))) return;
    await yoga.handle(req, res, { requestId, ...(check ? { tokenCheck: check } : {}) });
  }

  return server;
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
