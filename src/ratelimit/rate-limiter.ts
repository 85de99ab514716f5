import type { Redis } from 'ioredis';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { DomainError, ErrorCode } from '../errors.js';

/**
 * Per-user budgets for the operations that cost real work elsewhere: calls that reach a
 * Proxmox host, and VMID reservations. Counted in Redis so every instance shares one budget;
 * in-process in embedded mode (and as a fallback while Redis is unreachable, so an outage
 * never turns into "no limit" or "nothing works").
 */
export type RateLimitBucket = 'proxmox' | 'reservations';

export class RateLimitedError extends DomainError {
  constructor(bucket: RateLimitBucket, retryAfterSeconds: number) {
    super(ErrorCode.RATE_LIMITED, `Too many ${bucket === 'proxmox' ? 'Proxmox operations' : 'VMID reservations'}; try again in ${retryAfterSeconds} s.`, {
      retryAfterSeconds,
    });
  }
}

export interface RateLimits {
  proxmoxCallsPerMin: number;
  reservationsPerMin: number;
}

export class RateLimiter {
  private readonly limiters = new Map<RateLimitBucket, RateLimiterAbstract>();

  constructor(limits: RateLimits, redis: Redis | null) {
    const make = (bucket: RateLimitBucket, points: number) => {
      if (points <= 0) return;
      const memory = new RateLimiterMemory({ points, duration: 60, keyPrefix: `rl:${bucket}` });
      this.limiters.set(
        bucket,
        redis
          ? new RateLimiterRedis({
              storeClient: redis,
              points,
              duration: 60,
              keyPrefix: `rl:${bucket}`,
              insuranceLimiter: memory,
              // While Redis reconnects, count in-process at once instead of waiting on a command.
              rejectIfRedisNotReady: true,
            })
          : memory,
      );
    };
    make('proxmox', limits.proxmoxCallsPerMin);
    make('reservations', limits.reservationsPerMin);
  }

  /** Spends one unit of the user's budget, or throws RATE_LIMITED. */
  async consume(bucket: RateLimitBucket, userId: string): Promise<void> {
    const limiter = this.limiters.get(bucket);
    if (!limiter) return;
    try {
      await limiter.consume(userId);
    } catch (rejection) {
      if (rejection instanceof RateLimiterRes) {
        throw new RateLimitedError(bucket, Math.max(1, Math.ceil(rejection.msBeforeNext / 1000)));
      }
      throw rejection;
    }
  }
}
