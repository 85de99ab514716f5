import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import type { TestProject } from 'vitest/node';
import { openPostgres } from '../../src/db/database.js';
import { migrate } from '../../src/db/migrate.js';
import { databaseUrl, TEST_POSTGRES_URL, TEST_REDIS_URL } from './env.js';
import { deleteKeysWithPrefix } from './redis-keys.js';
import { SHARED_NODE_TIMEOUT_MS, startRedisCluster, startSentinelGroup, TEST_PORTS } from './redis-topologies.js';

/**
 * Once per run: dist/ built, and a fresh, migrated template database. Each test file clones it (fast, and
 * files cannot see each other's rows). Teardown drops every database and Redis key of the run.
 * Also a local Redis Cluster and Sentinel group (Debian's redis-server, as the single test
 * Redis), stopped at teardown; tests that kill masters start their own.
 */
export default async function setup(project: TestProject) {
  // Tests that start `npm start`, `npm run demo` or `npx pvegraph` run dist/: build it from
  // the sources under test (incremental: seconds when nothing changed).
  const root = path.resolve(import.meta.dirname, '../..');
  execFileSync(process.execPath, [path.join(root, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.build.json'], {
    cwd: root,
    stdio: 'inherit',
  });
  const runId = `pvgtest_${Date.now().toString(36)}_${randomBytes(3).toString('hex')}`;
  const templateDatabase = `${runId}_tpl`;
  await admin(`CREATE DATABASE "${templateDatabase}"`);
  const db = await openPostgres(databaseUrl(templateDatabase));
  try {
    await db.withSession((session) => migrate(session));
  } finally {
    await db.close();
  }
  const started = await Promise.allSettled([
    startRedisCluster(TEST_PORTS.cluster, SHARED_NODE_TIMEOUT_MS),
    startSentinelGroup(TEST_PORTS.sentinelRedis, TEST_PORTS.sentinels, undefined, SHARED_NODE_TIMEOUT_MS),
  ]);
  const [cluster, sentinel] = started.map((s) => (s.status === 'fulfilled' ? s.value : null));
  if (!cluster || !sentinel) {
    await Promise.all([cluster?.stop(), sentinel?.stop()]);
    throw started.find((s) => s.status === 'rejected')!.reason;
  }
  project.provide('redisClusterUrl', cluster.url);
  project.provide('redisSentinelUrl', sentinel.url);
  project.provide('runId', runId);
  project.provide('templateDatabase', templateDatabase);

  return async () => {
    await Promise.all([cluster.stop(), sentinel.stop()]);
    const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
    await client.connect();
    try {
      const { rows } = await client.query<{ datname: string }>(
        'SELECT datname FROM pg_database WHERE datname LIKE $1',
        [`${runId}%`],
      );
      for (const { datname } of rows) await client.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`);
    } finally {
      await client.end();
    }
    const redis = new Redis(TEST_REDIS_URL, { lazyConnect: true });
    try {
      await redis.connect();
      await deleteKeysWithPrefix(redis, runId);
    } catch {
      // Redis down at teardown: nothing of ours can be left in it that outlives its TTLs.
    } finally {
      redis.disconnect();
    }
  };
}

async function admin(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: TEST_POSTGRES_URL });
  await client.connect();
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}
