import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { inject } from 'vitest';
import { databaseUrl, TEST_POSTGRES_URL } from './env.js';

/** A database of this test file's own, cloned from the run's migrated template. */
export async function createTestDatabase(): Promise<{ url: string; name: string; drop(): Promise<void> }> {
  const name = `${inject('runId')}_${randomBytes(4).toString('hex')}`;
  // Two clones of one template at the same instant can collide ("source database is being
  // accessed by other users"): retry briefly.
  for (let attempt = 0; ; attempt++) {
    try {
      await adminQuery(`CREATE DATABASE "${name}" TEMPLATE "${inject('templateDatabase')}"`);
      break;
    } catch (err) {
      if (attempt >= 20 || !/being accessed by other users/.test((err as Error).message)) throw err;
      await new Promise((r) => setTimeout(r, 100 + Math.random() * 200));
    }
  }
  return {
    url: databaseUrl(name),
    name,
    drop: async () => {
      await adminQuery(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    },
  };
}

/** A statement on the shared server (`database` unset) or in one test database. */
export async function adminQuery(sql: string, params: unknown[] = [], database?: string): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: database ? databaseUrl(database) : TEST_POSTGRES_URL });
  await client.connect();
  try {
    return await client.query(sql, params);
  } finally {
    await client.end();
  }
}
