import { execFile } from 'node:child_process';
import { access, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import v8 from 'node:v8';
import { PGlite, type PGliteOptions } from '@electric-sql/pglite';

const run = promisify(execFile);

/**
 * Postgres settings for one small embedded server. PGlite keeps Postgres' defaults, sized
 * for a database server of its own: 128 MB of shared buffers (on a re-open that alone was
 * ~160 MB of the process's RSS). pvegraph's embedded database holds a few users, nodes and
 * reservations; 16 MB of buffers hold all of it many times over.
 */
const PGLITE_SETTINGS: readonly string[] = ['-c', 'shared_buffers=16MB', '-c', 'wal_buffers=512kB'];

/**
 * V8 flags for a process that runs PGlite: WebAssembly stays on the baseline compiler
 * (Liftoff). By default V8 recompiles hot functions of PGlite's ~10 MB Postgres module (and
 * Prisma's query compiler) with TurboFan in the background; on a start that took 450–550 MB
 * on top of the ~220 MB the process holds afterwards (peak RSS 730–800 MB instead of ~220),
 * cost a loaded 2-core machine ~1 s of start, and made 2,000 Prisma queries no faster
 * (2.7 s vs 2.5 s). Only embedded mode sets them; with PostgreSQL nothing changes.
 */
const LIFTOFF_ONLY_FLAGS: readonly string[] = ['--no-wasm-tier-up', '--no-wasm-dynamic-tiering'];

function pgliteOptions(): PGliteOptions {
  // startParams replaces PGlite's defaults (single-user mode, no workers, …): keep them.
  return { startParams: [...PGlite.defaultStartParams, ...PGLITE_SETTINGS] };
}

/**
 * Opens (creating if needed) the PGlite database in `dir`. A new database is created by a
 * short-lived child process: PGlite's initdb runs a second, temporary Postgres in memory next
 * to the real one, and the ~500 MB it touched would otherwise stay in this process's RSS for
 * its whole life (measured: 530–600 MB after a first start, 230 MB after a re-open).
 */
export async function openPglite(dir: string): Promise<PGlite> {
  // Before the first WebAssembly module is compiled (PGlite's and Prisma's compile lazily).
  v8.setFlagsFromString(LIFTOFF_ONLY_FLAGS.join(' '));
  if (!(await exists(path.join(dir, 'PG_VERSION')))) {
    await mkdir(dir, { recursive: true });
    await initdbInChild(dir);
  }
  return PGlite.create(dir, pgliteOptions());
}

async function initdbInChild(dir: string): Promise<void> {
  // Imports the same PGlite this process uses, by URL, so it works from src/ (tsx) and dist/.
  const script = `
    const { PGlite } = await import(${JSON.stringify(import.meta.resolve('@electric-sql/pglite'))});
    const [dir, params] = [process.argv[1], JSON.parse(process.argv[2])];
    const db = await PGlite.create(dir, { startParams: params });
    await db.close();`;
  try {
    await run(
      process.execPath,
      [...LIFTOFF_ONLY_FLAGS, '--input-type=module', '-e', script, dir, JSON.stringify(pgliteOptions().startParams)],
      {
        maxBuffer: 16 * 1024 * 1024,
      },
    );
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr?.trim();
    throw new Error(
      `creating the embedded database in ${dir} failed${stderr ? `: ${stderr.split('\n').at(-1)}` : ''}`,
      { cause: err },
    );
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}
