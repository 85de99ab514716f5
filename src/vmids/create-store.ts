import type { RedisClient } from '../redis/redis.js';
import type { Database } from '../db/database.js';
import { DurableVmidStore } from './durable-store.js';
import { MemoryVmidStore } from './memory-store.js';
import { RedisVmidStore, type RedisVmidStoreOptions } from './redis-store.js';
import { ReservationRecord } from './reservation-record.js';
import type { VmidStore } from './store.js';

/**
 * Redis when the deployment has one (REDIS_URL), else the embedded in-process store; either
 * way with the database as the durable record of reservations (DurableVmidStore).
 * `localReadMs`: VMID_READ_CACHE_MS (Redis only; the embedded store is in memory already).
 * `reuseHoldMs`: VMID_REUSE_HOLD_S in ms (both).
 */
export function createVmidStore(
  redis: RedisClient | null,
  db: Pick<Database, 'prisma' | 'sql'>,
  opts: Omit<RedisVmidStoreOptions, 'seeder'> = {},
): VmidStore {
  const record = new ReservationRecord(db);
  const seeder = (spaceId: string) => record.seedState(spaceId);
  const fast = redis
    ? new RedisVmidStore(redis, { ...opts, seeder })
    : new MemoryVmidStore({ seeder, reuseHoldMs: opts.reuseHoldMs ?? 0 });
  return new DurableVmidStore(fast, record, opts.log);
}
