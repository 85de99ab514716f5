import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { MemoryVmidStore } from './memory-store.js';
import { RedisVmidStore } from './redis-store.js';
import type { VmidStore } from './store.js';

/**
 * Redis when the deployment has one (REDIS_URL), else the embedded in-process store.
 * `localReadMs`: VMID_READ_CACHE_MS (Redis only; the embedded store is in memory already).
 */
export function createVmidStore(redis: Redis | null, opts: { log?: Logger; localReadMs?: number } = {}): VmidStore {
  return redis ? new RedisVmidStore(redis, opts) : new MemoryVmidStore();
}
