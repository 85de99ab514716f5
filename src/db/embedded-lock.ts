import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * PGlite is one process's database: a second process opening the same directory would
 * corrupt it. The embedded server records its pid; the CLI refuses while it is alive.
 */
const LOCK_FILE = 'server.pid';

export async function claimEmbeddedLock(dataDir: string): Promise<() => Promise<void>> {
  await assertNoEmbeddedServer(dataDir);
  await mkdir(dataDir, { recursive: true });
  const file = path.join(dataDir, LOCK_FILE);
  await writeFile(file, String(process.pid));
  return () => rm(file, { force: true });
}

export async function assertNoEmbeddedServer(dataDir: string): Promise<void> {
  let pid: number;
  try {
    pid = Number((await readFile(path.join(dataDir, LOCK_FILE), 'utf8')).trim());
  } catch {
    return;
  }
  if (!Number.isInteger(pid) || pid === process.pid || !isAlive(pid)) return;
  throw new Error(
    `the embedded database in ${dataDir} is in use by a running server (pid ${pid}); stop it first, or use DATABASE_URL`,
  );
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
