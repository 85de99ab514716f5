import { redisHealth, type RedisHealth } from '../redis/redis.js';
import type { Services } from '../services.js';

export interface Readiness {
  ready: boolean;
  /** redis: `failing over` / `reconnecting` say what ioredis is doing about it (see redisHealth). */
  checks: { database: 'ok' | 'fail'; redis: RedisHealth | 'not configured' };
}

const CHECK_TIMEOUT_MS = 2_000;

/** Database and Redis reachable, each bounded so a hung dependency answers 503, not a hang. */
export async function checkReadiness(services: Services): Promise<Readiness> {
  const [database, redis] = await Promise.all([
    probe(() => services.db.ping()).then((ok) => (ok ? ('ok' as const) : ('fail' as const))),
    services.redis ? redisHealth(services.redis, probe) : Promise.resolve('not configured' as const),
  ]);
  return { ready: database === 'ok' && (redis === 'ok' || redis === 'not configured'), checks: { database, redis } };
}

async function probe(fn: () => Promise<unknown>): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), CHECK_TIMEOUT_MS);
  });
  try {
    return await Promise.race([fn().then(() => true), timeout]);
  } catch {
    return false;
  } finally {
    clearTimeout(timer);
  }
}
