import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { MemoryVmidStore } from './memory-store.js';
import { RedisVmidStore } from './redis-store.js';
import type { VmidStore } from './store.js';

/** Redis when the deployment has one (REDIS_URL), else the embedded in-process store. */
export function createVmidStore(redis: Redis | null, log?: Logger): VmidStore {
  return redis ? new RedisVmidStore(redis, log ? { log } : {}) : new MemoryVmidStore();
}
