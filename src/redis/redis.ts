import { Redis } from 'ioredis';
import type { Logger } from 'pino';

export type { Redis };

/**
 * A Redis connection for commands. Every key goes under `keyPrefix` (deployments and test
 * runs share servers). Commands fail fast while Redis is down instead of queueing without
 * bound, and the client keeps reconnecting in the background, so service resumes by itself.
 */
export async function connectRedis(url: string, keyPrefix: string, log: Logger): Promise<Redis> {
  const redis = new Redis(url, {
    keyPrefix,
    lazyConnect: true,
    connectTimeout: 5_000,
    commandTimeout: 5_000,
    maxRetriesPerRequest: 1,
    enableOfflineQueue: true,
    retryStrategy: (attempt) => Math.min(attempt * 200, 2_000),
  });
  let reported = false;
  redis.on('error', (err) => {
    // Logged once per outage, not once per reconnect attempt.
    if (!reported) log.warn({ err: { message: err.message } }, 'redis connection error');
    reported = true;
  });
  redis.on('ready', () => {
    if (reported) log.info('redis connection restored');
    reported = false;
  });
  await redis.connect();
  return redis;
}
