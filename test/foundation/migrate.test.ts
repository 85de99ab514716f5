import { createHash } from 'node:crypto';
import { mkdtemp, mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { openPostgres } from '../../src/db/database.js';
import { type Migration, migrate, readMigrations } from '../../src/db/migrate.js';
import { databaseUrl } from '../support/env.js';
import { adminQuery } from '../support/test-database.js';
import { inject } from 'vitest';

const created: string[] = [];
async function emptyDatabase(): Promise<string> {
  const name = `${inject('runId')}_mig_${created.length}_${Math.random().toString(36).slice(2, 8)}`;
  await adminQuery(`CREATE DATABASE "${name}"`);
  created.push(name);
  return databaseUrl(name);
}
afterEach(async () => {
  for (const name of created.splice(0)) await adminQuery(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
});

describe('offline migration runner', () => {
  it('applies every migration once, with Prisma-compatible bookkeeping', async () => {
    const db = await openPostgres(await emptyDatabase());
    try {
      const files = await readMigrations();
      const first = await db.withSession((s) => migrate(s));
      expect(first.applied).toEqual(files.map((m) => m.name));
      const second = await db.withSession((s) => migrate(s));
      expect(second).toEqual({ applied: [], alreadyApplied: files.map((m) => m.name) });

      const rows = await db.prisma.$queryRawUnsafe<
        Array<{ migration_name: string; checksum: string; finished_at: Date | null; applied_steps_count: number }>
      >(
        'SELECT migration_name, checksum, finished_at, applied_steps_count FROM "_prisma_migrations" ORDER BY migration_name',
      );
      expect(rows.map((r) => r.migration_name)).toEqual(files.map((m) => m.name));
      for (const [i, row] of rows.entries()) {
        expect(row.checksum).toBe(createHash('sha256').update(files[i]!.sql).digest('hex'));
        expect(row.finished_at).not.toBeNull();
        expect(row.applied_steps_count).toBe(1);
      }
      // The partial unique index that keeps one default node per user exists.
      const idx = await db.prisma.$queryRawUnsafe<Array<{ indexdef: string }>>(
        `SELECT indexdef FROM pg_indexes WHERE indexname = 'proxmox_nodes_one_default_per_user'`,
      );
      expect(idx[0]?.indexdef).toMatch(/WHERE is_default/);
    } finally {
      await db.close();
    }
  });

  it('lets several instances start at once: each migration still runs exactly once', async () => {
    const url = await emptyDatabase();
    const dbs = await Promise.all([1, 2, 3].map(() => openPostgres(url)));
    try {
      const reports = await Promise.all(dbs.map((db) => db.withSession((s) => migrate(s))));
      const applied = reports.flatMap((r) => r.applied);
      expect(applied.sort()).toEqual((await readMigrations()).map((m) => m.name).sort());
    } finally {
      await Promise.all(dbs.map((db) => db.close()));
    }
  });

  it('rolls back a failing migration completely and reports it', async () => {
    const db = await openPostgres(await emptyDatabase());
    const good: Migration = sqlMigration('20990101000000_good', 'CREATE TABLE good_one (id int);');
    const bad: Migration = sqlMigration(
      '20990102000000_bad',
      'CREATE TABLE half_done (id int);\nSELECT * FROM no_such_table;',
    );
    try {
      await expect(db.withSession((s) => migrate(s, [good, bad]))).rejects.toThrow(/20990102000000_bad failed/);
      const tables = await db.prisma.$queryRawUnsafe<Array<{ tablename: string }>>(
        `SELECT tablename FROM pg_tables WHERE tablename IN ('good_one', 'half_done')`,
      );
      expect(tables.map((t) => t.tablename)).toEqual(['good_one']);
      const names = await db.prisma.$queryRawUnsafe<Array<{ migration_name: string }>>(
        'SELECT migration_name FROM "_prisma_migrations"',
      );
      expect(names.map((n) => n.migration_name)).toEqual(['20990101000000_good']);
    } finally {
      await db.close();
    }
  });

  it('refuses a migration that was edited after it was applied', async () => {
    const db = await openPostgres(await emptyDatabase());
    try {
      await db.withSession((s) => migrate(s, [sqlMigration('20990101000000_a', 'CREATE TABLE a (id int);')]));
      await expect(
        db.withSession((s) => migrate(s, [sqlMigration('20990101000000_a', 'CREATE TABLE a (id bigint);')])),
      ).rejects.toThrow(/changed after it was applied/);
    } finally {
      await db.close();
    }
  });

  it('reads migrations from a directory in name order', async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'pvg-mig-'));
    for (const name of ['2_b', '1_a']) {
      await mkdir(path.join(dir, name));
      await writeFile(path.join(dir, name, 'migration.sql'), `-- ${name}\n`);
    }
    expect((await readMigrations(dir)).map((m) => m.name)).toEqual(['1_a', '2_b']);
  });
});

function sqlMigration(name: string, sql: string): Migration {
  return { name, sql, checksum: createHash('sha256').update(sql).digest('hex') };
}
