import type { RedisClient } from '../redis/redis.js';
import { type RateLimiterAbstract, RateLimiterMemory, RateLimiterRedis, RateLimiterRes } from 'rate-limiter-flexible';
import { type LRUCache, lruCache } from '../cache/lru.js';
import { DomainError, ErrorCode } from '../errors.js';

/**
 * Budgets for what costs real work: per user, calls that reach a Proxmox host and VMID
 * reservations; per client address, requests without a valid API token that Yoga has to
 * parse (src/http/anonymous-budget.ts). Counted in Redis so every instance shares one budget;
 * in-process in embedded mode (and as a fallback while Redis is unreachable, so an outage
 * never turns into "no limit" or "nothing works").
 */
export type RateLimitBucket = 'proxmox' | 'reservations' | 'anonymous' | 'anonymousSite';

const SPENT_ON: Record<RateLimitBucket, string> = {
  proxmox: 'Proxmox operations',
  reservations: 'VMID reservations',
  anonymous: 'requests without a valid API token from this address',
  anonymousSite: 'requests without a valid API token from this network (IPv6 /48)',
};

/** How many per-address budgets an IPv6 /48 (one site) shares in all. */
const ANONYMOUS_SITE_BUDGETS = 16;

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
  /** Per client address (IPv4 address or IPv6 /64); an IPv6 /48 shares ANONYMOUS_SITE_BUDGETS times this. */
  anonymousRequestsPerMin: number;
}

/** Every budget counts per minute. */
const WINDOW_MS = 60_000;
/** Bound on the spent keys remembered per bucket (an address flood must not grow memory). */
const MAX_SPENT_KEYS = 10_000;

export class RateLimiter {
  private readonly limiters = new Map<RateLimitBucket, RateLimiterAbstract>();
  /** Per bucket, the keys this instance has seen refused, each kept until its budget is back. */
  private readonly spentUntil = new Map<RateLimitBucket, LRUCache<string, true>>();

  constructor(limits: RateLimits, redis: RedisClient | null) {
    const make = (bucket: RateLimitBucket, points: number, options: { blockInMemory?: boolean } = {}) => {
      if (points <= 0) return;
      const memory = new RateLimiterMemory({ points, duration: WINDOW_MS / 1000, keyPrefix: `rl:${bucket}` });
      this.limiters.set(
        bucket,
        redis
          ? new RateLimiterRedis({
              storeClient: redis,
              points,
              duration: WINDOW_MS / 1000,
              keyPrefix: `rl:${bucket}`,
              insuranceLimiter: memory,
              // While Redis reconnects, count in-process at once instead of waiting on a command.
              rejectIfRedisNotReady: true,
              // Once a request has been refused, the key is refused from memory until its window
              // ends, without a Redis round trip per refused request: a flood stays cheap.
              ...(options.blockInMemory ? { inMemoryBlockOnConsumed: points + 1 } : {}),
            })
          : memory,
      );
    };
    make('proxmox', limits.proxmoxCallsPerMin);
    make('reservations', limits.reservationsPerMin);
    make('anonymous', limits.anonymousRequestsPerMin, { blockInMemory: true });
    make('anonymousSite', limits.anonymousRequestsPerMin * ANONYMOUS_SITE_BUDGETS, { blockInMemory: true });
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
      this.spentUntil.get(bucket)?.delete(key); // there was a unit after all (a flushed or failed-over Redis)
      return 0;
    } catch (rejection) {
      if (!(rejection instanceof RateLimiterRes)) throw rejection;
      this.rememberSpent(bucket, key, rejection.msBeforeNext);
      return Math.max(1, Math.ceil(rejection.msBeforeNext / 1000));
    }
  }

  /**
   * Seconds until the budget of `key` is back, when this instance has seen it refused; 0
   * otherwise (another instance may have spent it: only take() asks Redis). Spends nothing and
   * asks nothing: for deciding whether work charged only afterwards (a token looked up in the
   * database) may start.
   */
  spentFor(bucket: RateLimitBucket, key: string): number {
    const spent = this.spentUntil.get(bucket);
    if (!spent?.has(key)) return 0;
    return Math.max(0, Math.ceil(spent.getRemainingTTL(key) / 1000));
  }

  private rememberSpent(bucket: RateLimitBucket, key: string, msBeforeNext: number): void {
    let spent = this.spentUntil.get(bucket);
    if (!spent) this.spentUntil.set(bucket, (spent = lruCache({ max: MAX_SPENT_KEYS })));
    // Monotonic (lru-cache's default clock), and never past one window: a clock step cannot
    // stretch a refusal. At least 1 ms: a lifetime of 0 would be "forever".
    spent.set(key, true, { ttl: Math.max(1, Math.min(msBeforeNext, WINDOW_MS)) });
  }
}
