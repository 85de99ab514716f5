import { randomBytes } from 'node:crypto';
import type { TypedDocumentNode } from '@graphql-typed-document-node/core';
import { print } from 'graphql';
import { inject } from 'vitest';
import { type Config, loadConfig } from '../../src/config/config.js';
import { type App, createApp } from '../../src/http/app.js';
import { createLogger } from '../../src/logging.js';
import { openRuntime, type Runtime } from '../../src/runtime.js';
import { TEST_REDIS_URL } from './env.js';
import { createTestDatabase } from './test-database.js';

export interface GraphQLResponse<T> {
  status: number;
  data?: T | null;
  errors?: Array<{ message: string; path?: Array<string | number>; extensions?: Record<string, unknown> }>;
}

export interface TestServer {
  url: string;
  graphqlUrl: string;
  wsUrl: string;
  app: App;
  runtime: Runtime;
  config: Config;
  databaseUrl: string;
  /** Creates a user and returns one of its API tokens. */
  createUser(name?: string): Promise<{ name: string; token: string; userId: string }>;
  /** POSTs a typed document; never throws on GraphQL errors. */
  gql<R, V>(document: TypedDocumentNode<R, V>, variables?: V, token?: string): Promise<GraphQLResponse<R>>;
  stop(): Promise<void>;
}

export interface TestServerOptions {
  /** Share a database with another server (several instances of one deployment). */
  databaseUrl?: string;
  /** Share a Redis key prefix with another server; default: a fresh one. */
  redisKeyPrefix?: string;
  /** false: embedded in-process cache and pub/sub. */
  redis?: boolean;
  env?: Record<string, string>;
  /** Receives every SQL statement the server sends. */
  onQuery?: (sql: string) => void;
  /** Receives the server's log lines (pino JSON); LOG_LEVEL from `env` applies. */
  logStream?: { write(line: string): void };
}

const TEST_KEY = randomBytes(32).toString('base64');

/** The real server (runtime + HTTP + WebSocket) on a free loopback port. */
export async function startTestServer(opts: TestServerOptions = {}): Promise<TestServer> {
  const ownDb = opts.databaseUrl ? null : await createTestDatabase();
  const databaseUrl = opts.databaseUrl ?? ownDb!.url;
  const config = loadConfig({
    DATABASE_URL: databaseUrl,
    ...(opts.redis === false ? {} : { REDIS_URL: TEST_REDIS_URL }),
    REDIS_KEY_PREFIX: opts.redisKeyPrefix ?? uniqueRedisPrefix(),
    ENCRYPTION_KEY: TEST_KEY,
    ALLOW_LOOPBACK_NODE_HOSTS: 'true',
    PROXMOX_TIMEOUT_MS: '3000',
    LOG_LEVEL: process.env.TEST_LOG_LEVEL ?? 'silent',
    // Suites create many nodes per user; the rate-limit tests set their own budgets.
    RATE_LIMIT_PROXMOX_PER_MIN: '100000',
    RATE_LIMIT_RESERVATIONS_PER_MIN: '1000000',
    // Every test request comes from 127.0.0.1; the budget is still counted on every tokenless one.
    RATE_LIMIT_ANONYMOUS_PER_MIN: '1000000',
    // CI runs the suite a second time with the fast paths off (.ci/run).
    ...(process.env.PVEGRAPH_FAST_PATHS ? { PVEGRAPH_FAST_PATHS: process.env.PVEGRAPH_FAST_PATHS } : {}),
    ...opts.env,
  });
  const log = createLogger(config.logLevel, opts.logStream);
  // The template is migrated already; a shared database was migrated by its first server.
  const runtime = await openRuntime(config, log, {
    migrate: false,
    ...(opts.onQuery ? { onQuery: opts.onQuery } : {}),
  });
  const app = createApp({ services: runtime.services, log, config });
  const url = await app.listen(0, '127.0.0.1');

  const gql: TestServer['gql'] = async (document, variables, token) => {
    const res = await fetch(`${url}/graphql`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json',
        ...(token ? { authorization: `Bearer ${token}` } : {}),
      },
      body: JSON.stringify({ query: print(document), variables }),
    });
    const body = (await res.json()) as Omit<GraphQLResponse<never>, 'status'>;
    return { status: res.status, ...body };
  };

  return {
    url,
    graphqlUrl: `${url}/graphql`,
    wsUrl: `${url.replace(/^http/, 'ws')}/graphql`,
    app,
    runtime,
    config,
    databaseUrl,
    async createUser(name = `user-${randomBytes(4).toString('hex')}`) {
      const { token, userId } = await runtime.services.auth.createUser(name);
      return { name, token, userId };
    },
    gql,
    async stop() {
      await app.stop();
      await runtime.close();
      await ownDb?.drop();
    },
  };
}

/** The current value of one Prometheus series on the server's /metrics (NaN when absent). */
export async function metricValue(server: Pick<TestServer, 'url'>, series: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : Number.NaN;
}

export function uniqueRedisPrefix(): string {
  return `${inject('runId')}:${randomBytes(4).toString('hex')}:`;
}
