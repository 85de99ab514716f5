import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');

/** The environment a user's shell has: nothing of the test runner's own settings. */
function userEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const { DATABASE_URL: _d, REDIS_URL: _r, ENCRYPTION_KEY: _k, VITEST: _v, NODE_ENV: _n, LOG_LEVEL: _l, ...rest } = process.env;
  return { ...rest, ...extra };
}

/** Collects a child's stdout and resolves once `pattern` matches it. */
function waitFor(child: ChildProcess, out: () => string, pattern: RegExp, what: string): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const check = () => {
      const m = pattern.exec(out());
      if (m) {
        child.stdout!.off('data', check);
        child.off('exit', exited);
        resolve(m);
      }
    };
    const exited = (code: number | null) => reject(new Error(`exited with ${code} before ${what}:\n${out()}`));
    child.stdout!.on('data', check);
    child.on('exit', exited);
    check();
  });
}

describe('npm run demo', () => {
  let dataDir: string;
  let demo: ChildProcess;
  let output = '';
  const stopGroup = (child: ChildProcess | undefined) => {
    if (child?.pid && child.exitCode === null) {
      try {
        process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  };

  beforeAll(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'pvg-demo-'));
    // Its own process group: npm, node and nothing else are stopped together at the end.
    demo = spawn('npm', ['run', 'demo'], {
      cwd: ROOT,
      env: userEnv({ PVEGRAPH_DATA_DIR: dataDir, PORT: '0' }),
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    demo.stdout!.on('data', (d: Buffer) => (output += d.toString()));
    demo.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  });
  afterAll(async () => {
    stopGroup(demo);
    await rm(dataDir, { recursive: true, force: true });
  });

  it('prints a token, a GraphiQL link and a curl line; the printed curl line receives live VMID events of the churning cluster', { timeout: 120_000 }, async () => {
    const printed = await waitFor(demo, () => output, /Ctrl-C stops the demo/, 'its instructions');
    expect(printed).toBeTruthy();
    const token = /^\s+(pvg_[A-Za-z0-9_-]{43})$/m.exec(output)?.[1];
    expect(token, output).toBeDefined();
    const graphiql = /^\s+(http:\/\/\S+\/graphql\?query=\S+)$/m.exec(output)?.[1];
    expect(decodeURIComponent(new URL(graphiql!).searchParams.get('query')!)).toMatch(/^subscription LiveVmids \{\s+vmidEvents \{/);
    expect(output).toContain(`{ "Authorization": "Bearer ${token}" }`);

    // The curl line exactly as printed (two lines joined by the shell's backslash-newline).
    const curl = /^\s+(curl -N [^\n]*\\\n[^\n]*)$/m.exec(output)?.[1];
    expect(curl, output).toBeDefined();
    const sse = spawn('/bin/sh', ['-c', curl!], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let events = '';
    sse.stdout!.on('data', (d: Buffer) => (events += d.toString()));
    try {
      // A change of the simulated cluster, not only the first fill: version 2 or later.
      const change = await waitFor(sse, () => events, /data: (\{"data":\{"vmidEvents":\{"kind":"REFRESHED"[^\n]*"version":([2-9]|\d{2,})[^\n]*)\n/, 'a VMID change');
      const event = (JSON.parse(change[1]!) as { data: { vmidEvents: { added: number[]; removed: number[] } } }).data.vmidEvents;
      expect(event.added.length + event.removed.length).toBeGreaterThan(0);
    } finally {
      stopGroup(sse);
    }

    // Loopback is open for the simulator's endpoint alone.
    const url = new URL(graphiql!).origin;
    const refused = await fetch(`${url}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({
        query: 'mutation { createNode(input: { name: "other", host: "127.0.0.1", port: 1, tokenId: "root@pam!x", tokenSecret: "s" }) { id } }',
      }),
    }).then((r) => r.json() as Promise<{ errors?: Array<{ extensions: { code: string } }> }>);
    expect(refused.errors?.[0]?.extensions.code).toBe('HOST_NOT_ALLOWED');
  });
});
