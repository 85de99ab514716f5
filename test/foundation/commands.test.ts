import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inject } from 'vitest';
import { databaseUrl } from '../support/env.js';
import { nodeInputFor, startTestSimulator } from '../support/simulator.js';
import { adminQuery, createTestDatabase } from '../support/test-database.js';

const run = promisify(execFile);
const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = path.join(ROOT, 'bin/pvegraph.js');
const KEY = randomBytes(32).toString('base64');

/** The environment a user's shell has: nothing of the test runner's own settings. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const { DATABASE_URL: _d, REDIS_URL: _r, ENCRYPTION_KEY: _k, VITEST: _v, NODE_ENV: _n, ...rest } = process.env;
  return { ...rest, LOG_LEVEL: 'warn', ...extra };
}

async function graphqlMe(url: string, token: string) {
  const res = await fetch(`${url}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query: '{ me { name } }' }),
  });
  return res.json() as Promise<{ data?: { me: { name: string } }; errors?: Array<{ extensions: { code: string } }> }>;
}

describe('npx pvegraph (CLI) against PostgreSQL', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let env: NodeJS.ProcessEnv;
  beforeAll(async () => {
    db = await createTestDatabase();
    env = cleanEnv({ DATABASE_URL: db.url, ENCRYPTION_KEY: KEY });
  });
  afterAll(() => db.drop());

  it('user create prints a working token as its last line; token create adds another', async () => {
    const created = await run(BIN, ['user', 'create', '--name', 'erin'], { env, cwd: ROOT });
    const token = created.stdout.trim().split('\n').at(-1)!;
    expect(token).toMatch(/^pvg_[A-Za-z0-9_-]{43}$/);

    const again = await run(BIN, ['token', 'create', '--user', 'erin'], { env, cwd: ROOT });
    const second = again.stdout.trim().split('\n').at(-1)!;
    expect(second).toMatch(/^pvg_/);
    expect(second).not.toBe(token);

    const listed = await run(BIN, ['token', 'list', '--user', 'erin'], { env, cwd: ROOT });
    expect(listed.stdout.trim().split('\n')).toHaveLength(2);
    // Only the display prefix is ever shown again, never the token.
    expect(listed.stdout).not.toContain(token);
    expect(listed.stdout).toContain(token.slice(0, 10));
  });

  it('fails with a clear message and a non-zero exit for a duplicate user, an unknown user and bad config', async () => {
    await run(BIN, ['user', 'create', '--name', 'frank'], { env, cwd: ROOT });
    await expect(run(BIN, ['user', 'create', '--name', 'frank'], { env, cwd: ROOT })).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('already exists'),
    });
    await expect(run(BIN, ['token', 'create', '--user', 'nobody'], { env, cwd: ROOT })).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('nobody was not found'),
    });
    await expect(run(BIN, ['migrate'], { env: { ...env, PORT: 'x' }, cwd: ROOT })).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringMatching(/^pvegraph: invalid configuration: PORT must be an integer/),
    });
  });

  it('migrate applies the migrations to an empty database, without ENCRYPTION_KEY or Redis', async () => {
    const name = `${inject('runId')}_cli_migrate`;
    await adminQuery(`CREATE DATABASE "${name}"`);
    try {
      // A deploy step has the database URL, not the app's secrets; a dead REDIS_URL is ignored.
      const bare = cleanEnv({ DATABASE_URL: databaseUrl(name), REDIS_URL: 'redis://127.0.0.1:1' });
      const first = await run(BIN, ['migrate'], { env: bare, cwd: ROOT });
      expect(first.stdout).toMatch(/^applied 20261126000000_init$/m);
      const second = await run(BIN, ['migrate'], { env: bare, cwd: ROOT });
      expect(second.stdout).not.toMatch(/^applied/m);
      expect(second.stdout).toMatch(/database is up to date/);
    } finally {
      await adminQuery(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    }
  });
});

describe('npm start in embedded mode (no DATABASE_URL, no REDIS_URL)', () => {
  let dataDir: string;
  const children: ChildProcess[] = [];
  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'pvg-embedded-'));
  });
  afterAll(async () => {
    for (const child of children) child.kill('SIGKILL');
    await rm(dataDir, { recursive: true, force: true });
  });

  /** Starts the server as `npm start` does and waits for its "listening" line. */
  function start(): Promise<{ child: ChildProcess; stdout: () => string; url: string }> {
    const child = spawn(process.execPath, ['dist/main.js'], {
      cwd: ROOT,
      env: cleanEnv({ PVEGRAPH_DATA_DIR: dataDir, PORT: '0', LOG_LEVEL: 'info', ALLOW_LOOPBACK_NODE_HOSTS: 'true' }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`server did not start:\n${out}`)), 60_000);
      child.on('exit', (code) => reject(new Error(`server exited with ${code}:\n${out}`)));
      child.stdout.on('data', () => {
        const m = /GraphiQL at (http:\/\/[^\s"]+)\/graphql/.exec(out);
        if (m) {
          clearTimeout(timer);
          resolve({ child, stdout: () => out, url: m[1]! });
        }
      });
    });
  }

  /** Runs the server with `args` until it exits by itself: its exit code and output. */
  async function runToExit(args: string[], env: NodeJS.ProcessEnv) {
    const child = spawn(process.execPath, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    return { code, stdout, stderr: stderr.trim() };
  }

  async function stop(child: ChildProcess): Promise<number | null> {
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    return exited;
  }

  it(
    'creates admin once, prints its token, serves me with it, and says which mode runs',
    { timeout: 120_000 },
    async () => {
      const first = await start();
      const token = /^\s+(pvg_[A-Za-z0-9_-]{43})$/m.exec(first.stdout())?.[1];
      expect(token, first.stdout()).toBeDefined();
      expect(first.stdout()).toMatch(/embedded mode: PGlite in .*in-process cache and pub\/sub/);
      expect(first.stdout()).toMatch(/ENCRYPTION_KEY not set: generated one into the data directory/);
      expect(await graphqlMe(first.url, token!)).toEqual({ data: { me: { name: 'admin' } } });
      expect((await graphqlMe(first.url, 'pvg_' + 'C'.repeat(43))).errors?.[0]?.extensions.code).toBe(
        'UNAUTHENTICATED',
      );
      const page = await fetch(`${first.url}/graphql`, { headers: { accept: 'text/html' } });
      expect(await page.text()).toMatch(/<title>pvegraph<\/title>/);

      // The whole API on PGlite and the in-process VMID store: nodes, the cache, reservations.
      const sim = await startTestSimulator({ guests: 5 });
      try {
        const gql = async (query: string, variables: unknown) =>
          (await (
            await fetch(`${first.url}/graphql`, {
              method: 'POST',
              headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
              body: JSON.stringify({ query, variables }),
            })
          ).json()) as { data?: Record<string, Record<string, unknown>>; errors?: unknown[] };
        const created = await gql('mutation($i: CreateNodeInput!) { createNode(input: $i) { id isDefault } }', {
          i: nodeInputFor(sim),
        });
        expect(created.errors).toBeUndefined();
        expect(created.data!.createNode!.isDefault).toBe(true);
        const nodeId = created.data!.createNode!.id;
        const set = await gql('query($n: ID!) { vmidsTaken(nodeId: $n) { taken fromCache } }', { n: nodeId });
        expect(set.data!.vmidsTaken).toEqual({ taken: [100, 101, 102, 103, 104], fromCache: false });
        const reserved = await gql('mutation($n: ID!) { reserveVmid(nodeId: $n) { vmid } }', { n: nodeId });
        expect(reserved.data!.reserveVmid).toEqual({ vmid: 105 });
      } finally {
        await sim.stop();
      }

      // The CLI must not open the PGlite directory while the server holds it.
      await expect(
        run(BIN, ['user', 'create', '--name', 'x'], { env: cleanEnv({ PVEGRAPH_DATA_DIR: dataDir }), cwd: ROOT }),
      ).rejects.toMatchObject({
        stderr: expect.stringContaining('in use by a running server'),
      });
      expect(await stop(first.child)).toBe(0);

      // Second start: same data, same token, no new admin and no new key.
      const second = await start();
      expect(second.stdout()).not.toMatch(/pvg_/);
      expect(second.stdout()).not.toMatch(/ENCRYPTION_KEY not set/);
      expect(await graphqlMe(second.url, token!)).toEqual({ data: { me: { name: 'admin' } } });
      expect(await stop(second.child)).toBe(0);
    },
  );

  it('on a port in use: one line, exit 1, no stack and no admin created', { timeout: 120_000 }, async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const port = (taken.address() as AddressInfo).port;
    const freshDir = await mkdtemp(path.join(tmpdir(), 'pvg-embedded-'));
    try {
      const { code, stdout, stderr } = await runToExit(
        ['--import', 'tsx', 'src/main.ts'],
        cleanEnv({ PVEGRAPH_DATA_DIR: freshDir, HOST: '127.0.0.1', PORT: String(port), LOG_LEVEL: 'warn' }),
      );
      expect(code).toBe(1);
      expect(stderr).toBe(
        `pvegraph: failed to start: 127.0.0.1:${port} is in use by another process (set PORT or HOST)`,
      );
      expect(stdout).not.toMatch(/First start|pvg_/);
    } finally {
      await new Promise((resolve) => taken.close(resolve));
      await rm(freshDir, { recursive: true, force: true });
    }
  });

  it(
    'when Redis cannot be reached: one line naming REDIS_URL and the cause, exit 1 (a Sentinel group that never answers included)',
    { timeout: 60_000 },
    async () => {
      const db = await createTestDatabase();
      try {
        const attempt = (redisUrl: string) =>
          runToExit(
            ['dist/main.js'],
            cleanEnv({ DATABASE_URL: db.url, ENCRYPTION_KEY: KEY, REDIS_URL: redisUrl, PORT: '0', LOG_LEVEL: 'fatal' }),
          );
        const [single, sentinel] = await Promise.all([
          attempt('redis://127.0.0.1:1'),
          attempt('redis+sentinel://127.0.0.1:1/mymaster'),
        ]);
        expect(single).toEqual({
          code: 1,
          stdout: '',
          stderr:
            'pvegraph: failed to start: Redis (REDIS_URL: redis://127.0.0.1:1) cannot be reached: connect ECONNREFUSED 127.0.0.1:1',
        });
        expect(sentinel.code).toBe(1);
        expect(sentinel.stderr).toMatch(
          /^pvegraph: failed to start: Redis \(REDIS_URL: Sentinel 127\.0\.0\.1:1 master mymaster\) cannot be reached: All sentinels are unreachable\b[^\n]*$/,
        );
      } finally {
        await db.drop();
      }
    },
  );

  it('never creates an admin user when DATABASE_URL is set', async () => {
    const db = await createTestDatabase();
    try {
      const child = spawn(process.execPath, ['dist/main.js'], {
        cwd: ROOT,
        env: cleanEnv({ DATABASE_URL: db.url, ENCRYPTION_KEY: KEY, PORT: '0', LOG_LEVEL: 'info' }),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      children.push(child);
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      await expect.poll(() => out, { timeout: 30_000 }).toMatch(/GraphiQL at/);
      expect(out).toMatch(/service mode: PostgreSQL/);
      expect(out).not.toMatch(/pvg_/);
      expect(await stop(child)).toBe(0);
    } finally {
      await db.drop();
    }
  });
});
