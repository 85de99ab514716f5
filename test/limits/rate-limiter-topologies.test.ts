import pino from 'pino';
import { afterAll, beforeAll, describe, expect, inject, it } from 'vitest';
import { RateLimiter } from '../../src/ratelimit/rate-limiter.js';
import { connectRedis, type RedisClient } from '../../src/redis/redis.js';
import { TEST_REDIS_URL } from '../support/env.js';
import { uniqueRedisPrefix } from '../support/test-server.js';

/** Budgets are shared by every instance whatever REDIS_URL names: one server, Sentinel, a Redis Cluster. */
describe.each([
  ['one Redis server', () => TEST_REDIS_URL],
  ['Sentinel', () => inject('redisSentinelUrl')],
  ['Redis Cluster', () => inject('redisClusterUrl')],
] as const)('rate limits on %s', (_name, url) => {
  let connections: RedisClient[];
  let limiters: RateLimiter[];

  beforeAll(async () => {
    const prefix = uniqueRedisPrefix();
    connections = await Promise.all([0, 1].map(() => connectRedis(url(), prefix, pino({ level: 'silent' }))));
    limiters = connections.map(
      (redis) => new RateLimiter({ proxmoxCallsPerMin: 0, reservationsPerMin: 3, anonymousRequestsPerMin: 0 }, redis),
    );
  });
  afterAll(async () => {
    await Promise.all(connections.map((r) => r.quit()));
  });

  it('one budget across instances: spent on one, refused on the other', async () => {
    const [a, b] = limiters as [RateLimiter, RateLimiter];
    expect(await a.take('reservations', 'user-1')).toBe(0);
    expect(await b.take('reservations', 'user-1')).toBe(0);
    expect(await a.take('reservations', 'user-1')).toBe(0);
    expect(await b.take('reservations', 'user-1')).toBeGreaterThan(0);
    // Another key (on a cluster most likely in another slot) has its own budget.
    expect(await b.take('reservations', 'user-2')).toBe(0);
  });
});
