import type { Logger } from 'pino';
import { AuthService } from './auth/auth-service.js';
import { MemoryWatchLease, RedisWatchLease } from './clusters/lease.js';
import { ClusterWatcher } from './clusters/watcher.js';
import type { Config } from './config/config.js';
import { loadOrCreateKeyFile } from './crypto/key-file.js';
import { SecretBox } from './crypto/secret-box.js';
import { type Database, openEmbedded, openPostgres } from './db/database.js';
import { migrate } from './db/migrate.js';
import { ClusterTargets } from './nodes/cluster-targets.js';
import { ContainerService } from './nodes/container-service.js';
import { NodeService } from './nodes/node-service.js';
import { Metrics } from './observability/metrics.js';
import { ProxmoxClient } from './proxmox/index.js';
import { RateLimiter } from './ratelimit/rate-limiter.js';
import { connectRedis } from './redis/redis.js';
import type { Services } from './services.js';
import { UserService } from './users/user-service.js';
import { createVmidStore, VmidService } from './vmids/index.js';
import { ReservationKeys } from './vmids/reservation-keys.js';

export interface Runtime {
  services: Services;
  secretBox: SecretBox;
  mode: 'embedded' | 'postgresql';
  close(): Promise<void>;
}

/** Opens the database (migrating it), Redis and the key, and builds the services. */
export interface RuntimeOptions {
  /** Default true; tests that clone a migrated template skip it. */
  migrate?: boolean;
  /** Sees every SQL statement (PostgreSQL only; tests count round trips). */
  onQuery?: (sql: string) => void;
}

export async function openRuntime(config: Config, log: Logger, opts: RuntimeOptions = {}): Promise<Runtime> {
  const db: Database = config.databaseUrl
    ? await openPostgres(config.databaseUrl, opts.onQuery ? { onQuery: opts.onQuery } : {})
    : await openEmbedded(config.dataDir);
  const closers: Array<() => Promise<unknown>> = [() => db.close()];
  try {
    if (opts.migrate !== false) {
      const report = await db.withSession((session) => migrate(session));
      if (report.applied.length > 0) log.info({ applied: report.applied }, 'database migrations applied');
    }

    let key = config.encryptionKey;
    if (!key) {
      // Only reachable in embedded mode: config refuses a DATABASE_URL without a key.
      const file = await loadOrCreateKeyFile(config.dataDir);
      if (file.created)
        log.warn(
          { file: file.file },
          'ENCRYPTION_KEY not set: generated one into the data directory; back it up with the data',
        );
      key = file.key;
    }
    const keys = [key, ...config.previousEncryptionKeys];
    const secretBox = new SecretBox(keys);

    const redis = config.redis ? await connectRedis(config.redis, config.redisKeyPrefix, log) : null;
    if (redis) closers.push(() => redis.quit().catch(() => redis.disconnect()));

    const metrics = new Metrics();
    const rateLimiter = new RateLimiter(config.rateLimits, redis);
    const proxmox = new ProxmoxClient({
      timeoutMs: config.proxmoxTimeoutMs,
      allowPrivateHosts: config.allowPrivateNodeHosts,
      allowLoopbackHosts: config.allowLoopbackNodeHosts,
      ...(config.loopbackNodeEndpoints ? { loopbackEndpoints: config.loopbackNodeEndpoints } : {}),
      logger: log.child({ component: 'proxmox' }),
      onCall: (call) =>
        metrics.proxmoxCalls.observe(
          { path: Metrics.proxmoxPathLabel(call.path), outcome: call.outcome },
          call.durationMs / 1000,
        ),
    });
    closers.push(() => proxmox.close());
    // The VMID capability asks Proxmox about a cluster's guests through the registrations'
    // targets; node management tells the VMID capability about containers and connection
    // changes (through VmidHooks). Built in that order: neither needs the other first.
    const targets = new ClusterTargets(db.prisma, secretBox, proxmox);
    // Closed before the database: its endpoint-health writes stop first.
    closers.push(async () => targets.close());
    const snapshotReads = {
      memory: metrics.vmidSnapshotReads.labels({ source: 'memory' }),
      redis: metrics.vmidSnapshotReads.labels({ source: 'redis' }),
      renewal: metrics.vmidSnapshotReads.labels({ source: 'renewal' }),
    };
    // One watcher per cluster, not per client: while a cluster has subscribers on any instance,
    // the lease holder probes its tasks each VMID_WATCH_INTERVAL_S and lists its guests when
    // they changed (REFRESHED). Probe and listing spend the registration owner's Proxmox budget.
    const watcher: ClusterWatcher = new ClusterWatcher({
      lease: redis ? new RedisWatchLease(redis) : new MemoryWatchLease(),
      intervalMs: config.vmidWatchIntervalS * 1000,
      probe: async (node) => {
        await rateLimiter.consume('proxmox', node.userId);
        return targets.clusterTasks(node.id);
      },
      refresh: (node): Promise<void> => vmids.refreshSet(node),
      isCached: (node): Promise<boolean> => vmids.hasCachedSet(node),
      log: log.child({ component: 'cluster-watch' }),
      onProbe: (outcome) => metrics.clusterWatchProbes.inc({ outcome }),
      onListing: (outcome) => metrics.clusterWatchListings.inc({ outcome }),
    });
    const vmids = new VmidService({
      store: createVmidStore(redis, db, {
        log: log.child({ component: 'vmids' }),
        // The local snapshots are a fast path (src/fast-paths/index.ts): off with the others.
        localReadMs: config.fastPaths ? config.vmidReadCacheMs : 0,
        reuseHoldMs: config.vmidReuseHoldS * 1000,
        onRead: (source) => snapshotReads[source].inc(),
      }),
      // Every fill reaches Proxmox: it spends the owner's Proxmox budget, so invalidate-and-read
      // loops cannot turn the cache into an unmetered proxy.
      fetchTakenVmids: async (node) => {
        await rateLimiter.consume('proxmox', node.userId);
        return targets.takenVmids(node.id);
      },
      authority: {
        isFree: (node, vmid) => targets.isVmidFree(node.id, vmid),
        nextIdRange: (node) => targets.nextIdRange(node.id),
      },
      cacheTtlSeconds: config.vmidCacheTtlS,
      // A slow but live filler (bounded by PROXMOX_TIMEOUT_MS) is not overtaken.
      fillLockMs: config.proxmoxTimeoutMs + 5_000,
      log: log.child({ component: 'vmids' }),
      onLookup: (hit) => metrics.vmidCacheLookups.inc({ result: hit ? 'hit' : 'miss' }),
      onSpaceWatched: (node) => watcher.watch(node),
      keys: new ReservationKeys(db.prisma),
    });
    closers.push(() => vmids.close());
    // Closed before the VMID store and Redis: the leases it holds are released, not left to lapse.
    closers.push(() => watcher.close());
    const backgroundCheckFailed = (cache: 'token' | 'ownership') => {
      // One warning a minute per cache: during an outage every request past the re-check
      // point would otherwise log one.
      let lastWarned = -Infinity;
      return (err: unknown) => {
        metrics.backgroundCheckFailures.inc({ cache });
        if (Date.now() - lastWarned < 60_000) return;
        lastWarned = Date.now();
        log.warn(
          { cache, err: { message: (err as Error).message } },
          'cache: background re-check failed; cached entries answer until they expire',
        );
      };
    };
    const nodes = new NodeService(
      db.prisma,
      secretBox,
      proxmox,
      vmids,
      config.tokenCacheTtlMs,
      backgroundCheckFailed('ownership'),
      targets,
    );
    void nodes
      .identifyPending()
      .then((n) => n > 0 && log.info({ identified: n }, 'registrations identified by their Proxmox cluster'))
      .catch((err: unknown) =>
        log.warn(
          { err: { message: (err as Error).message } },
          'could not identify the clusters of older registrations',
        ),
      );
    const services: Services = {
      db,
      redis,
      auth: new AuthService(db.prisma, {
        cacheTtlMs: config.tokenCacheTtlMs,
        onBackgroundCheckFailed: backgroundCheckFailed('token'),
      }),
      metrics,
      rateLimiter,
      users: new UserService(db.prisma),
      proxmox,
      nodes,
      containers: new ContainerService(db.prisma, nodes, vmids),
      vmids,
    };
    return {
      services,
      secretBox,
      mode: db.kind,
      async close() {
        for (const close of closers.reverse())
          await close().catch((err: unknown) => log.warn({ err }, 'error while closing'));
      },
    };
  } catch (err) {
    for (const close of closers.reverse()) await close().catch(() => undefined);
    throw err;
  }
}
