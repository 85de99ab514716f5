/** Where the shared test services are; a run never writes outside its own names there. */
export const TEST_POSTGRES_URL = process.env.TEST_DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';
export const TEST_REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';

export function databaseUrl(name: string): string {
  const url = new URL(TEST_POSTGRES_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

declare module 'vitest' {
  export interface ProvidedContext {
    /** Unique per `npm test` run: prefixes its databases and Redis keys. */
    runId: string;
    /** A migrated database that each test file clones. */
    templateDatabase: string;
    /** REDIS_URL of the run's Redis Cluster (three masters, one replica each; test/support/redis-topologies.ts). */
    redisClusterUrl: string;
    /** REDIS_URL of the run's Sentinel group (one master, one replica, three sentinels). */
    redisSentinelUrl: string;
  }
}
