import { Cluster, type ClusterOptions, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from 'pino';
import { describeRedisTarget, parseRedisTarget, type RedisTarget } from './redis-target.js';

export type { Redis, Cluster };
export { describeRedisTarget, parseRedisTarget, RedisUrlError, type RedisTarget } from './redis-target.js';

/**
 * A connection to whatever REDIS_URL names: one server or a Sentinel group (a `Redis`, which
 * follows the master Sentinel names) or a Redis Cluster (a `Cluster`, which routes each
 * command to the master of its key's hash slot). Both take the same commands.
 */
export type RedisClient = Redis | Cluster;

/** Whether events travel over sharded pub/sub (SSUBSCRIBE/SPUBLISH): on a Redis Cluster. */
export function isCluster(client: RedisClient): client is Cluster {
  return client instanceof Cluster;
}

/**
 * Commands fail fast while Redis is down instead of queueing without bound, and every
 * connection keeps reconnecting in the background, so service resumes by itself.
 */
const COMMON: RedisOptions = {
  connectTimeout: 5_000,
  commandTimeout: 5_000,
  maxRetriesPerRequest: 1,
  enableOfflineQueue: true,
  retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
};

/**
 * The one place a Redis connection is made (subscribers are `duplicate()`s of it, which keep
 * its options). Every key goes under `keyPrefix` (deployments and test runs share servers).
 * `target`: REDIS_URL, parsed or not.
 */
export async function connectRedis(target: RedisTarget | string, keyPrefix: string, log: Logger): Promise<RedisClient> {
  const t = typeof target === 'string' ? parseRedisTarget(target) : target;
  const client = createClient(t, keyPrefix);
  let reported = false;
  let lastError: string | null = null;
  client.on('error', (err: Error) => {
    lastError = err.message;
    // Logged once per outage, not once per reconnect attempt.
    if (!reported) log.warn({ err: { message: err.message } }, 'redis connection error');
    reported = true;
  });
  client.on('ready', () => {
    if (reported) log.info('redis connection restored');
    reported = false;
  });
  if (isCluster(client)) {
    client.on('+node', () => log.debug('redis cluster: node added'));
    client.on('-node', (_redis: unknown, key: string) =>
      log.info({ node: key }, 'redis cluster: node gone (failover or topology change)'),
    );
  }
  try {
    await startedWithin(client, STARTUP_WAIT_MS);
  } catch (err) {
    client.disconnect();
    throw new RedisStartupError(
      `Redis (REDIS_URL: ${describeRedisTarget(t)}) cannot be reached: ${lastError ?? (err as Error).message}`,
    );
  }
  return client;
}

/**
 * How long start-up waits for Redis to answer at all. One server that refuses the connection
 * fails at once; Sentinel and Cluster clients keep asking their seed nodes, which would hold
 * start-up for as long as none answers (without a word, for Sentinel). Once a connection is
 * made there is no limit: a Redis still loading its data answers when it is done.
 */
const STARTUP_WAIT_MS = 10_000;

/** Redis could not be reached at start-up (the message names REDIS_URL's target and the last error). */
export class RedisStartupError extends Error {
  override readonly name = 'RedisStartupError';
}

/** Connects, or rejects when nothing answered within `ms` (no limit once connected). */
function startedWithin(client: RedisClient, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms / 1000} s`)), ms);
  });
  const answered = () => clearTimeout(timer);
  client.once('connect', answered);
  return Promise.race([client.connect(), timeout]).finally(() => {
    clearTimeout(timer);
    client.off('connect', answered);
  });
}

function createClient(target: RedisTarget, keyPrefix: string): RedisClient {
  switch (target.kind) {
    case 'single':
      return new Redis(target.url, { ...COMMON, keyPrefix, lazyConnect: true });
    case 'sentinel':
      return new Redis({
        ...COMMON,
        keyPrefix,
        lazyConnect: true,
        sentinels: target.sentinels,
        name: target.masterName,
        db: target.db,
        ...(target.username ? { username: target.username } : {}),
        ...(target.password ? { password: target.password } : {}),
        ...(target.sentinelPassword ? { sentinelPassword: target.sentinelPassword } : {}),
        ...(target.tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
        // A master that dies closes the connection: ioredis asks the sentinels again and
        // connects to whichever master they name (it checks the role). (Not ioredis's
        // failoverDetector: its sentinel connections report errors nobody can listen to and
        // outlive quit() in ioredis 5.11.)
        sentinelRetryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
      });
    case 'cluster': {
      const redisOptions: RedisOptions = {
        connectTimeout: COMMON.connectTimeout!,
        commandTimeout: COMMON.commandTimeout!,
        maxRetriesPerRequest: 1,
        ...(target.username ? { username: target.username } : {}),
        ...(target.password ? { password: target.password } : {}),
        ...(target.tls ? { tls: {} } : {}),
      };
      const options: ClusterOptions = {
        keyPrefix,
        lazyConnect: true,
        enableOfflineQueue: true,
        // Events travel to the shard that owns their channel only (SPUBLISH/SSUBSCRIBE).
        shardedSubscribers: true,
        redisOptions,
        clusterRetryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
        // While a replica is being promoted the slot answers CLUSTERDOWN or nothing: retry
        // briefly, then fail the command (the request answers SERVICE_UNAVAILABLE).
        retryDelayOnFailover: 200,
        retryDelayOnClusterDown: 200,
        slotsRefreshTimeout: 2_000,
        slotsRefreshInterval: 5_000,
      };
      return new Cluster(target.nodes, options);
    }
  }
}

/**
 * What /readyz says about Redis. `reconnecting`: one server that worked is being reconnected
 * to; `failing over`: a Sentinel master or a cluster shard is gone and ioredis is following
 * the promotion (commands to it fail meanwhile; nothing needs a restart).
 */
export type RedisHealth = 'ok' | 'fail' | 'reconnecting' | 'failing over';

export async function redisHealth(
  client: RedisClient,
  ping: (fn: () => Promise<unknown>) => Promise<boolean>,
): Promise<RedisHealth> {
  if (isCluster(client)) {
    if (client.status !== 'ready') return (await ping(() => client.ping())) ? 'ok' : 'fail';
    // Every master must answer: a dead one's slots fail until its replica is promoted.
    const masters = client.nodes('master');
    if (masters.length === 0) return 'fail';
    const answers = await Promise.all(masters.map((m) => ping(() => m.ping())));
    if (answers.every(Boolean)) return 'ok';
    return answers.some(Boolean) ? 'failing over' : 'fail';
  }
  if (await ping(() => client.ping())) return 'ok';
  if (client.status === 'ready' || client.status === 'end') return 'fail';
  return client.options.sentinels ? 'failing over' : 'reconnecting';
}

/** Whether a connection that has worked before is currently reconnecting. */
export interface ConnectionWatch {
  down(): boolean;
}

export function watchConnection(redis: RedisClient): ConnectionWatch {
  let wasReady = redis.status === 'ready';
  redis.on('ready', () => {
    wasReady = true;
  });
  return { down: () => wasReady && redis.status !== 'ready' };
}
