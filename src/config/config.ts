import path from 'node:path';
import proxyAddr from 'proxy-addr';
import { z } from 'zod';
import { parseRedisTarget, type RedisTarget, RedisUrlError } from '../redis/redis-target.js';

/**
 * Every environment variable of the contract, parsed once at start-up. A bad value stops the
 * process with one line naming the variable (see `ConfigError`).
 */
/** Spellings of a boolean flag (any case, surrounding spaces ignored); unset or empty: the default. */
const bool = (name: string, fallback: boolean) =>
  z.preprocess(
    (v) => (typeof v === 'string' && v.trim() !== '' ? v.trim() : undefined),
    z
      .stringbool({
        truthy: ['1', 'true', 'yes', 'on'],
        falsy: ['0', 'false', 'no', 'off'],
        error: (issue) => `${name} must be true or false (got "${String(issue.input)}")`,
      })
      .default(fallback),
  );

const int = (name: string, fallback: number, min: number, max: number) =>
  z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v.trim() === '') return fallback;
      const n = Number(v);
      if (!Number.isInteger(n) || n < min || n > max) {
        ctx.addIssue({ code: 'custom', message: `${name} must be an integer from ${min} to ${max} (got "${v}")` });
        return z.NEVER;
      }
      return n;
    });

const url = (name: string, protocols: string[]) =>
  z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v.trim() === '') return undefined;
      let parsed: URL;
      try {
        parsed = new URL(v);
      } catch {
        ctx.addIssue({ code: 'custom', message: `${name} is not a valid URL` });
        return z.NEVER;
      }
      if (!protocols.includes(parsed.protocol)) {
        ctx.addIssue({
          code: 'custom',
          message: `${name} must start with ${protocols.map((p) => `${p}//`).join(' or ')}`,
        });
        return z.NEVER;
      }
      return v;
    });

/** One server, a Sentinel group or a Redis Cluster (src/redis/redis-target.ts has the forms). */
const redisTarget = (name: string) =>
  z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v.trim() === '') return undefined;
      try {
        return parseRedisTarget(v.trim());
      } catch (err) {
        if (!(err instanceof RedisUrlError)) throw err;
        ctx.addIssue({ code: 'custom', message: `${name} ${err.message}` });
        return z.NEVER;
      }
    });

/**
 * Reverse proxies whose X-Forwarded-For is believed: addresses, CIDR ranges, or proxy-addr's
 * names `loopback`, `linklocal`, `uniquelocal`, comma-separated. Unset: none (the peer's
 * address is the client's, and the header is ignored, so it cannot be spoofed).
 */
const trustedProxies = (name: string) =>
  z
    .string()
    .optional()
    .transform((v, ctx) => {
      const entries = (v ?? '')
        .split(',')
        .map((s) => s.trim())
        .filter(Boolean);
      try {
        proxyAddr.compile(entries);
      } catch (err) {
        ctx.addIssue({
          code: 'custom',
          message: `${name}: ${(err as Error).message} (addresses, CIDR ranges, loopback, linklocal or uniquelocal)`,
        });
        return z.NEVER;
      }
      return entries;
    });

/** 32 bytes, base64. Several keys (for rotation) are given comma-separated; the first encrypts. */
const encryptionKeys = (name: string) =>
  z
    .string()
    .optional()
    .transform((v, ctx) => {
      if (v === undefined || v.trim() === '') return [];
      const keys = v.split(',').map((part) => Buffer.from(part.trim(), 'base64'));
      if (keys.some((k) => k.length !== 32)) {
        ctx.addIssue({
          code: 'custom',
          message: `${name} must be 32 bytes, base64-encoded (e.g. \`openssl rand -base64 32\`)`,
        });
        return z.NEVER;
      }
      return keys;
    });

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

const envSchema = z.object({
  HOST: z.string().default('127.0.0.1'),
  PORT: int('PORT', 4000, 0, 65535),
  DATABASE_URL: url('DATABASE_URL', ['postgresql:', 'postgres:']),
  REDIS_URL: redisTarget('REDIS_URL'),
  REDIS_KEY_PREFIX: z.string().default('pvegraph:'),
  ENCRYPTION_KEY: encryptionKeys('ENCRYPTION_KEY'),
  ENCRYPTION_KEYS_PREVIOUS: encryptionKeys('ENCRYPTION_KEYS_PREVIOUS'),
  PVEGRAPH_DATA_DIR: z.string().default('./.data'),
  VMID_CACHE_TTL_S: int('VMID_CACHE_TTL_S', 300, 1, 86_400),
  VMID_READ_CACHE_MS: int('VMID_READ_CACHE_MS', 1_000, 0, 60_000),
  VMID_REUSE_HOLD_S: int('VMID_REUSE_HOLD_S', 60, 0, 86_400),
  VMID_WATCH_INTERVAL_S: int('VMID_WATCH_INTERVAL_S', 5, 1, 3_600),
  PROXMOX_TIMEOUT_MS: int('PROXMOX_TIMEOUT_MS', 10_000, 100, 300_000),
  ALLOW_PRIVATE_NODE_HOSTS: bool('ALLOW_PRIVATE_NODE_HOSTS', true),
  ALLOW_LOOPBACK_NODE_HOSTS: bool('ALLOW_LOOPBACK_NODE_HOSTS', false),
  LOG_LEVEL: z
    .string()
    .default('info')
    .refine((v) => (LOG_LEVELS as readonly string[]).includes(v), {
      message: `LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')}`,
    }),
  TOKEN_CACHE_TTL_MS: int('TOKEN_CACHE_TTL_MS', 30_000, 0, 3_600_000),
  NODE_ENV: z.string().default('development'),
  GRAPHQL_INTROSPECTION: z.string().optional(),
  GRAPHIQL: z.string().optional(),
  MAX_REQUEST_BODY_BYTES: int('MAX_REQUEST_BODY_BYTES', 1_000_000, 1_000, 100_000_000),
  RATE_LIMIT_PROXMOX_PER_MIN: int('RATE_LIMIT_PROXMOX_PER_MIN', 60, 0, 1_000_000),
  RATE_LIMIT_RESERVATIONS_PER_MIN: int('RATE_LIMIT_RESERVATIONS_PER_MIN', 600, 0, 10_000_000),
  RATE_LIMIT_ANONYMOUS_PER_MIN: int('RATE_LIMIT_ANONYMOUS_PER_MIN', 120, 0, 10_000_000),
  TRUST_PROXY: trustedProxies('TRUST_PROXY'),
  WS_MAX_CONNECTIONS_PER_USER: int('WS_MAX_CONNECTIONS_PER_USER', 100, 1, 1_000_000),
  MAX_SUBSCRIPTIONS_PER_USER: int('MAX_SUBSCRIPTIONS_PER_USER', 1_000, 1, 10_000_000),
  WS_MAX_BUFFERED_BYTES: int('WS_MAX_BUFFERED_BYTES', 4 * 1024 * 1024, 1_024, 1_073_741_824),
  METRICS_TOKEN: z.string().optional(),
  PVEGRAPH_FAST_PATHS: bool('PVEGRAPH_FAST_PATHS', true),
});

export type LogLevel = (typeof LOG_LEVELS)[number];

export interface Config {
  host: string;
  port: number;
  /** `embedded` when DATABASE_URL is unset: PGlite in `dataDir`. */
  databaseUrl: string | undefined;
  /** REDIS_URL: one server, Sentinel or Cluster. Unset: in-process cache and pub/sub (single instance only). */
  redis: RedisTarget | undefined;
  redisKeyPrefix: string;
  /** Encrypts new values. Unset: embedded mode generates one into `dataDir`. */
  encryptionKey: Buffer | undefined;
  /** Older keys that still decrypt (rotation); never encrypt. */
  previousEncryptionKeys: Buffer[];
  dataDir: string;
  vmidCacheTtlS: number;
  /** How long an instance answers a node's VMIDs from memory before asking Redis again (0: always asks). */
  vmidReadCacheMs: number;
  /** How long a freed VMID is skipped by reservations without a vmid and nextFreeVmid (0: not at all). */
  vmidReuseHoldS: number;
  /** While a cluster has subscribers, how often one instance asks Proxmox whether guests changed behind pvegraph's back. */
  vmidWatchIntervalS: number;
  proxmoxTimeoutMs: number;
  allowPrivateNodeHosts: boolean;
  allowLoopbackNodeHosts: boolean;
  /**
   * Loopback `address:port` endpoints allowed although ALLOW_LOOPBACK_NODE_HOSTS is off. Not
   * from the environment: `npm run demo` sets it to its own simulator's endpoint.
   */
  loopbackNodeEndpoints?: readonly string[];
  logLevel: LogLevel;
  /** How long a verified API token is trusted without asking the database again. */
  tokenCacheTtlMs: number;
  production: boolean;
  /** Default: on outside production. Off also hides field suggestions in errors. */
  introspection: boolean;
  graphiql: boolean;
  maxRequestBodyBytes: number;
  /** Per user (per client address for anonymous requests) and minute; 0 disables the limit. */
  rateLimits: { proxmoxCallsPerMin: number; reservationsPerMin: number; anonymousRequestsPerMin: number };
  /** Proxies whose X-Forwarded-For names the client (proxy-addr's trust list); empty: none. */
  trustProxy: string[];
  wsMaxConnectionsPerUser: number;
  /** Unsent bytes a WebSocket may hold before an event ends its subscription (client not reading). */
  wsMaxBufferedBytes: number;
  maxSubscriptionsPerUser: number;
  /** When set, /metrics requires `Authorization: Bearer <METRICS_TOKEN>`. */
  metricsToken: string | undefined;
  /** The fast paths around Yoga and graphql-ws (src/fast-paths/); off: plain Yoga and plain graphql-ws. */
  fastPaths: boolean;
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export interface LoadOptions {
  /** The server needs ENCRYPTION_KEY with DATABASE_URL; `pvegraph migrate` and the token commands do not. */
  requireEncryptionKey?: boolean;
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env, opts: LoadOptions = {}): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const variable = String(issue.path[0] ?? 'environment');
    const message = issue.message.startsWith(variable) ? issue.message : `${variable}: ${issue.message}`;
    throw new ConfigError(`invalid configuration: ${message}`);
  }
  const e = parsed.data;
  if (e.ENCRYPTION_KEY.length > 1) {
    throw new ConfigError(
      'invalid configuration: ENCRYPTION_KEY holds one key; put older ones in ENCRYPTION_KEYS_PREVIOUS',
    );
  }
  if (opts.requireEncryptionKey !== false && e.DATABASE_URL && e.ENCRYPTION_KEY.length === 0) {
    throw new ConfigError(
      'invalid configuration: ENCRYPTION_KEY is required when DATABASE_URL is set (32 bytes, base64)',
    );
  }
  if (e.REDIS_URL?.kind === 'cluster' && /[{}]/.test(e.REDIS_KEY_PREFIX)) {
    // The keys' hash tags ({space}) put each space's keys in one slot; a brace in the prefix
    // would be taken as the tag instead and put every key in one slot.
    throw new ConfigError('invalid configuration: REDIS_KEY_PREFIX must not contain { or } with a Redis Cluster');
  }
  const production = e.NODE_ENV === 'production';
  const introspection = parseFlag('GRAPHQL_INTROSPECTION', e.GRAPHQL_INTROSPECTION, !production);
  return {
    host: e.HOST,
    port: e.PORT,
    databaseUrl: e.DATABASE_URL,
    redis: e.REDIS_URL,
    redisKeyPrefix: e.REDIS_KEY_PREFIX,
    encryptionKey: e.ENCRYPTION_KEY[0],
    previousEncryptionKeys: e.ENCRYPTION_KEYS_PREVIOUS,
    dataDir: path.resolve(e.PVEGRAPH_DATA_DIR),
    vmidCacheTtlS: e.VMID_CACHE_TTL_S,
    vmidReadCacheMs: e.VMID_READ_CACHE_MS,
    vmidReuseHoldS: e.VMID_REUSE_HOLD_S,
    vmidWatchIntervalS: e.VMID_WATCH_INTERVAL_S,
    proxmoxTimeoutMs: e.PROXMOX_TIMEOUT_MS,
    allowPrivateNodeHosts: e.ALLOW_PRIVATE_NODE_HOSTS,
    allowLoopbackNodeHosts: e.ALLOW_LOOPBACK_NODE_HOSTS,
    logLevel: e.LOG_LEVEL as LogLevel,
    tokenCacheTtlMs: e.TOKEN_CACHE_TTL_MS,
    production,
    introspection,
    graphiql: parseFlag('GRAPHIQL', e.GRAPHIQL, !production) && introspection,
    maxRequestBodyBytes: e.MAX_REQUEST_BODY_BYTES,
    rateLimits: {
      proxmoxCallsPerMin: e.RATE_LIMIT_PROXMOX_PER_MIN,
      reservationsPerMin: e.RATE_LIMIT_RESERVATIONS_PER_MIN,
      anonymousRequestsPerMin: e.RATE_LIMIT_ANONYMOUS_PER_MIN,
    },
    trustProxy: e.TRUST_PROXY,
    wsMaxConnectionsPerUser: e.WS_MAX_CONNECTIONS_PER_USER,
    wsMaxBufferedBytes: e.WS_MAX_BUFFERED_BYTES,
    maxSubscriptionsPerUser: e.MAX_SUBSCRIPTIONS_PER_USER,
    metricsToken: e.METRICS_TOKEN || undefined,
    fastPaths: e.PVEGRAPH_FAST_PATHS,
  };
}

/** Booleans whose default depends on another setting (NODE_ENV). */
function parseFlag(name: string, value: string | undefined, fallback: boolean): boolean {
  const parsed = bool(name, fallback).safeParse(value);
  if (!parsed.success) throw new ConfigError(`invalid configuration: ${parsed.error.issues[0]!.message}`);
  return parsed.data;
}
