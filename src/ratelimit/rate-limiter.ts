import type { Redis } from 'ioredis';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { DomainError, ErrorCode } from '../errors.js';

/**
 * Budgets for what costs real work: per user, calls that reach a Proxmox host and VMID
 * reservations; per client address, requests without a valid API token that Yoga has to
 * parse (src/http/anonymous-budget.ts). Counted in Redis so every instance shares one budget;
 * in-process in embedded mode (and as a fallback while Redis is unreachable, so an outage
 * never turns into "no limit" or "nothing works").
 */
export type RateLimitBucket = 'proxmox' | 'reservations' | 'anonymous';

const SPENT_ON: Record<RateLimitBucket, string> = {
  proxmox: 'Proxmox operations',
  reservations: 'VMID reservations',
  anonymous: 'requests without a valid API token from this address',
};

export class RateLimitedError extends DomainError {
  constructor(bucket: RateLimitBucket, retryAfterSeconds: number) {
    super(ErrorCode.RATE_LIMITED, rateLimitedMessage(bucket, retryAfterSeconds), { retryAfterSeconds });
  }
}

export function rateLimitedMessage(bucket: RateLimitBucket, retryAfterSeconds: number): string {
  return `Too many ${SPENT_ON[bucket]}; try again in ${retryAfterSeconds} s.`;
}

export interface RateLimits {
  proxmoxCallsPerMin: number;
  reservationsPerMin: number;
  /** Per client address (IPv4 address or IPv6 /64). */
  anonymousRequestsPerMin: number;
}

export class RateLimiter {
  private readonly limiters = new Map<RateLimitBucket, RateLimiterAbstract>();

  constructor(limits: RateLimits, redis: Redis | null) {
    const make = (bucket: RateLimitBucket, points: number, options: { blockInMemory?: boolean } = {}) => {
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
              // Once a request has been refused, the key is refused from memory until its window
              // ends, without a Redis round trip per refused request: a flood stays cheap. (Not at
              // `points`: a unit refunded after the last one was taken must still be usable.)
              ...(options.blockInMemory ? { inMemoryBlockOnConsumed: points + 1 } : {}),
            })
          : memory,
      );
    };
    make('proxmox', limits.proxmoxCallsPerMin);
    make('reservations', limits.reservationsPerMin);
    make('anonymous', limits.anonymousRequestsPerMin, { blockInMemory: true });
  }

  /** Whether the bucket has a limit (0 in the configuration turns it off). */
  limits(bucket: RateLimitBucket): boolean {
    return this.limiters.has(bucket);
  }

  /** Spends one unit of the budget of `key` (a user id, or a client address), or throws RATE_LIMITED. */
  async consume(bucket: RateLimitBucket, key: string): Promise<void> {
    const retryAfterSeconds = await this.take(bucket, key);
    if (retryAfterSeconds > 0) throw new RateLimitedError(bucket, retryAfterSeconds);
  }

  /**
   * Spends one unit of the budget of `key`: 0 when it was there, otherwise the seconds until
   * it is. Builds no error, for callers that answer a refusal themselves on a hot path.
   */
  async take(bucket: RateLimitBucket, key: string): Promise<number> {
    const limiter = this.limiters.get(bucket);
    if (!limiter) return 0;
    try {
      await limiter.consume(key);
      return 0;
    } catch (rejection) {
      if (!(rejection instanceof RateLimiterRes)) throw rejection;
      return Math.max(1, Math.ceil(rejection.msBeforeNext / 1000));
    }
  }

  /**
   * Gives back one unit taken by take() for work that turned out to be the user's (a valid
   * token). Best effort: if Redis fails just then, the unit stays spent until the window ends.
   */
  async refund(bucket: RateLimitBucket, key: string): Promise<void> {
    await this.limiters
      .get(bucket)
      ?.reward(key, 1)
      .catch(() => undefined);
  }
}
