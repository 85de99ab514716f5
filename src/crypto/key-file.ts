import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * Embedded mode only: the key lives next to the database it protects, created once.
 * Returns the key and whether it was just generated (the caller warns about it).
 */
export async function loadOrCreateKeyFile(dataDir: string): Promise<{ key: Buffer; created: boolean; file: string }> {
  const file = path.join(dataDir, 'encryption.key');
  try {
    const key = Buffer.from((await readFile(file, 'utf8')).trim(), 'base64');
    if (key.length !== 32) throw new Error(`${file} does not hold a 32-byte base64 key`);
    return { key, created: false, file };
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  await mkdir(dataDir, { recursive: true });
  const key = randomBytes(32);
  // `wx`: never overwrite a key that appeared meanwhile; 0600: only the owner reads it.
  await writeFile(file, key.toString('base64') + '\n', { flag: 'wx', mode: 0o600 });
  return { key, created: true, file };
}
