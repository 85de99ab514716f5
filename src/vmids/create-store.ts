import type { Redis } from 'ioredis';
import { MemoryVmidStore } from './memory-store.js';
import { RedisVmidStore, type RedisVmidStoreOptions } from './redis-store.js';
import type { VmidStore } from './store.js';

/**
 * Redis when the deployment has one (REDIS_URL), else the embedded in-process store.
 * `localReadMs`: VMID_READ_CACHE_MS (Redis only; the embedded store is in memory already).
 */
export function createVmidStore(redis: Redis | null, opts: RedisVmidStoreOptions = {}): VmidStore {
  return redis ? new RedisVmidStore(redis, opts) : new MemoryVmidStore();
}
