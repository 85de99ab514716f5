import type { Server } from 'node:http';
import type { Logger } from 'pino';
import { createPvegraphYoga, type PvegraphYoga } from '../api/yoga.js';
import { createAuthenticate } from '../auth/authenticate.js';
import { RevocationWatch } from '../auth/revocation-watch.js';
import type { Config } from '../config/config.js';
import { createFastPaths } from '../fast-paths/index.js';
import { createErrorMasker } from '../graphql/plugins/mask-errors.js';
import type { Services } from '../services.js';
import { checkHttpToken, createAnonymousBudget } from './anonymous-budget.js';
import { clientAddressOf } from './client-address.js';
import { createGraphqlWsServer } from './graphql-ws-server.js';
import { createHttpServer } from './http-server.js';
import { listen, stopServing } from './lifecycle.js';

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
  | 'fastPaths'
>;

export interface AppOptions {
  services: Services;
  log: Logger;
  config: AppConfig;
}

export interface App {
  readonly server: Server;
  readonly yoga: PvegraphYoga;
  listen(port: number, host: string): Promise<string>;
  /** Stops accepting, completes every subscription, closes WebSockets with 1001, lets in-flight HTTP requests finish. */
  stop(): Promise<void>;
}

/**
 * The server: one authenticate() for HTTP (http-server.ts), the Yoga context and WebSocket
 * (graphql-ws-server.ts); the fast paths (src/fast-paths/) when PVEGRAPH_FAST_PATHS is on;
 * listening and shutdown (lifecycle.ts).
 */
export function createApp({ services, log, config }: AppOptions): App {
  const { metrics } = services;
  const masker = createErrorMasker(log);
  // Sockets and SSE subscriptions of a revoked token are ended too, idle or not: a sweep every
  // fifth of the token cache lifetime ends them within about 1.2 × that lifetime.
  const revocations = new RevocationWatch({
    verify: (token) => services.auth.verify(token),
    intervalMs: Math.max(1_000, config.tokenCacheTtlMs / 5),
    onRevokeFailed: (err) => log.error({ err }, 'could not end a connection of a revoked token'),
  });
  const budget = createAnonymousBudget(services, clientAddressOf(config.trustProxy));
  const authenticate = createAuthenticate(services.auth, budget);
  const checkToken = checkHttpToken.bind(null, authenticate);
  const shutdown = new AbortController();
  const fastPaths = config.fastPaths
    ? createFastPaths({
        services,
        log,
        masker,
        maxRequestBodyBytes: config.maxRequestBodyBytes,
        wsMaxBufferedBytes: config.wsMaxBufferedBytes,
      })
    : null;

  const yoga = createPvegraphYoga({
    authenticate,
    revocations,
    shutdown: shutdown.signal,
    masker,
    services,
    log,
    metrics,
    graphiql: config.graphiql,
    introspection: config.introspection,
    maxRequestBodyBytes: config.maxRequestBodyBytes,
    maxSubscriptionsPerUser: config.maxSubscriptionsPerUser,
    ...(fastPaths ? { fastPaths: fastPaths.yogaPlugins } : {}),
  });
  const server = createHttpServer({
    services,
    log,
    config,
    yoga,
    budget,
    checkToken,
    preparedQueries: fastPaths?.preparedQueryPath(yoga, checkToken),
  });
  const ws = createGraphqlWsServer({
    server,
    yoga,
    authenticate,
    revocations,
    metrics,
    config,
    sinkFor: fastPaths?.sinkFor,
  });

  return {
    server,
    yoga,
    listen: (port, host) => listen(server, port, host),
    async stop() {
      revocations.stop();
      await stopServing({ server, ws, shutdown, log });
    },
  };
}
