import type { AuthService } from './auth/auth-service.js';
import type { Database } from './db/database.js';
import type { ContainerService } from './nodes/container-service.js';
import type { NodeService } from './nodes/node-service.js';
import type { Metrics } from './observability/metrics.js';
import type { ProxmoxClient } from './proxmox/index.js';
import type { RateLimiter } from './ratelimit/rate-limiter.js';
import type { RedisClient } from './redis/redis.js';
import type { UserService } from './users/user-service.js';
import type { VmidService } from './vmids/index.js';

/** Everything resolvers call, built once per server process (see runtime.ts). */
export interface Services {
  db: Database;
  /** Null in embedded mode (in-process cache and pub/sub). */
  redis: RedisClient | null;
  auth: AuthService;
  metrics: Metrics;
  rateLimiter: RateLimiter;
  users: UserService;
  proxmox: ProxmoxClient;
  nodes: NodeService;
  containers: ContainerService;
  vmids: VmidService;
}
