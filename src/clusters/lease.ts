import type { RedisClient } from '../redis/redis.js';

/**
 * Which instance watches a cluster (a VMID space) for changes made outside pvegraph: one
 * lease per space, held by one instance at a time, renewed by its holder and released when
 * its last local subscriber leaves; it lapses by itself when the holder dies. Alongside it,
 * the space's watch state: when Proxmox was last probed (so a lease changing hands, or two
 * holders for a moment, cannot ask more than once per interval) and the last tasks seen (so
 * a new holder goes on from them).
 */
export interface WatchLease {
  /**
   * Takes the space's lease for `token` (SET NX PX), or renews it when `token` holds it
   * already; false when another token holds it.
   */
  acquire(spaceId: string, token: string, ttlMs: number): Promise<boolean>;
  /** Gives the lease up, if `token` still holds it. */
  release(spaceId: string, token: string): Promise<void>;
  /**
   * Permission to probe Proxmox now: 0 when granted (the probe time is recorded), otherwise
   * the milliseconds until `intervalMs` have passed since the space's last probe (by any
   * holder); -1 when `token` does not hold the lease (any more).
   */
  claimProbe(spaceId: string, token: string, intervalMs: number): Promise<number>;
  /** The cursor a holder saved last (saveCursor), null when none. */
  loadCursor(spaceId: string): Promise<string | null>;
  /** Keeps the cursor for the next holder, if `token` still holds the lease. */
  saveCursor(spaceId: string, token: string, cursor: string): Promise<void>;
}

/** How long a space's watch state (last probe, cursor) outlives its last write. */
const STATE_TTL_MS = 24 * 60 * 60 * 1000;

/** Key names relative to the connection's keyPrefix, hash-tagged by space (one slot). */
const leaseKeys = (spaceId: string): [string, string] => [
  `cluster-watch-lease:{${spaceId}}`,
  `cluster-watch:{${spaceId}}`,
];

const ACQUIRE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
`;

const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
`;

// Time from Redis: the holders' clocks never meet.
const CLAIM_PROBE = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[2])
local last = tonumber(redis.call('HGET', KEYS[2], 'probedAt') or '0')
local wait = last + interval - now
if wait > 0 then return math.min(wait, interval) end
redis.call('HSET', KEYS[2], 'probedAt', now)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 0
`;

const SAVE_CURSOR = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[2], 'cursor', ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
`;

interface LeaseCommands {
  pvgWatchAcquire(lease: string, token: string, ttlMs: number): Promise<number>;
  pvgWatchRelease(lease: string, token: string): Promise<number>;
  pvgWatchClaimProbe(
    lease: string,
    state: string,
    token: string,
    intervalMs: number,
    stateTtlMs: number,
  ): Promise<number>;
  pvgWatchSaveCursor(lease: string, state: string, token: string, cursor: string, stateTtlMs: number): Promise<number>;
}

/** The lease of a deployment with REDIS_URL: shared by every instance. */
export class RedisWatchLease implements WatchLease {
  private readonly redis: RedisClient & LeaseCommands;

  constructor(redis: RedisClient) {
    redis.defineCommand('pvgWatchAcquire', { numberOfKeys: 1, lua: ACQUIRE });
    redis.defineCommand('pvgWatchRelease', { numberOfKeys: 1, lua: RELEASE });
    redis.defineCommand('pvgWatchClaimProbe', { numberOfKeys: 2, lua: CLAIM_PROBE });
    redis.defineCommand('pvgWatchSaveCursor', { numberOfKeys: 2, lua: SAVE_CURSOR });
    this.redis = redis as RedisClient & LeaseCommands;
  }

  async acquire(spaceId: string, token: string, ttlMs: number): Promise<boolean> {
    return (await this.redis.pvgWatchAcquire(leaseKeys(spaceId)[0], token, Math.ceil(ttlMs))) === 1;
  }

  async release(spaceId: string, token: string): Promise<void> {
    await this.redis.pvgWatchRelease(leaseKeys(spaceId)[0], token);
  }

  claimProbe(spaceId: string, token: string, intervalMs: number): Promise<number> {
    const [lease, state] = leaseKeys(spaceId);
    return this.redis.pvgWatchClaimProbe(lease, state, token, Math.ceil(intervalMs), STATE_TTL_MS);
  }

  loadCursor(spaceId: string): Promise<string | null> {
    return this.redis.hget(leaseKeys(spaceId)[1], 'cursor');
  }

  async saveCursor(spaceId: string, token: string, cursor: string): Promise<void> {
    const [lease, state] = leaseKeys(spaceId);
    await this.redis.pvgWatchSaveCursor(lease, state, token, cursor, STATE_TTL_MS);
  }
}

/** The lease when embedded (no Redis): one process, the same rules. */
export class MemoryWatchLease implements WatchLease {
  private readonly leases = new Map<string, { token: string; until: number }>();
  private readonly states = new Map<string, { probedAt: number; cursor: string | null }>();

  async acquire(spaceId: string, token: string, ttlMs: number): Promise<boolean> {
    const now = performance.now();
    const held = this.leases.get(spaceId);
    if (held && held.until > now && held.token !== token) return false;
    this.leases.set(spaceId, { token, until: now + ttlMs });
    return true;
  }

  async release(spaceId: string, token: string): Promise<void> {
    if (this.leases.get(spaceId)?.token === token) this.leases.delete(spaceId);
  }

  async claimProbe(spaceId: string, token: string, intervalMs: number): Promise<number> {
    const now = performance.now();
    if (!this.holds(spaceId, token, now)) return -1;
    const state = this.state(spaceId);
    const wait = state.probedAt + intervalMs - now;
    if (wait > 0) return Math.min(Math.ceil(wait), intervalMs);
    state.probedAt = now;
    return 0;
  }

  async loadCursor(spaceId: string): Promise<string | null> {
    return this.states.get(spaceId)?.cursor ?? null;
  }

  async saveCursor(spaceId: string, token: string, cursor: string): Promise<void> {
    if (this.holds(spaceId, token, performance.now())) this.state(spaceId).cursor = cursor;
  }

  private holds(spaceId: string, token: string, now: number): boolean {
    const held = this.leases.get(spaceId);
    return held !== undefined && held.token === token && held.until > now;
  }

  private state(spaceId: string) {
    let state = this.states.get(spaceId);
    if (!state) this.states.set(spaceId, (state = { probedAt: -Infinity, cursor: null }));
    return state;
  }
}
