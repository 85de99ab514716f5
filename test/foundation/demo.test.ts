import type { ChildProcess } from 'node:child_process';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readmeBlock, startGroup, stopGroup, userEnv, waitForOutput } from '../support/readme.js';

const run = promisify(execFile);

/** A VMID event line of an SSE stream, parsed. */
type Event = { kind: string; version: number; added: number[]; removed: number[] };
const eventLine = (kind: string) =>
  new RegExp(`data: (\\{"data":\\{"vmidEvents":\\{"kind":"${kind}"[^\\n]*"version":(\\d+)[^\\n]*)\\n`, 'g');

/** Waits for the first event of `kind` with at least `minVersion` in a growing SSE output. */
async function eventOf(child: ChildProcess, output: () => string, kind: string, minVersion: number): Promise<Event> {
  const pattern = {
    exec: (s: string) => [...s.matchAll(eventLine(kind))].find((m) => Number(m[2]) >= minVersion) ?? null,
  };
  const m = await waitForOutput(child, output, pattern, `a ${kind} event (version ≥ ${minVersion})`);
  return (JSON.parse(m[1]!) as { data: { vmidEvents: Event } }).data.vmidEvents;
}

describe('npm run demo (README: "Try it without a Proxmox")', () => {
  let dataDir: string;
  let demo: ReturnType<typeof startGroup>;
  const streams: ChildProcess[] = [];

  beforeAll(async () => {
    expect((await readmeBlock('Try it without a Proxmox', 'demo')).trim()).toBe('npm run demo');
    dataDir = await mkdtemp(path.join(tmpdir(), 'pvg-demo-'));
    demo = startGroup('npm', ['run', 'demo'], userEnv({ PVEGRAPH_DATA_DIR: dataDir, PORT: '0' }));
    await waitForOutput(demo.child, demo.output, /Ctrl-C stops the demo/, 'its instructions');
  }, 120_000);
  afterAll(async () => {
    for (const s of streams) stopGroup(s);
    stopGroup(demo?.child);
    await rm(dataDir, { recursive: true, force: true });
  });

  const printed = () => {
    const out = demo.output();
    const token = /^\s+(pvg_[A-Za-z0-9_-]{43})$/m.exec(out)?.[1];
    const graphiql = /^\s+(http:\/\/\S+\/graphql\?query=\S+)$/m.exec(out)?.[1];
    const curl = /^\s+(curl -N [^\n]*\\\n[^\n]*)$/m.exec(out)?.[1];
    if (!token || !graphiql || !curl)
      throw new Error(`the demo did not print a token, a GraphiQL link and a curl line:\n${out}`);
    return { token, graphiql, curl, origin: new URL(graphiql).origin };
  };

  it('prints a token, the Authorization header to paste and a GraphiQL link that opens with the vmidEvents subscription', () => {
    const { token, graphiql } = printed();
    expect(new URL(graphiql).searchParams.get('query')).toMatch(
      /^subscription LiveVmids \{\s+vmidEvents \{ kind nodeId version added removed at \}/,
    );
    expect(demo.output()).toContain(`{ "Authorization": "Bearer ${token}" }`);
  });

  it('the printed curl line receives changes of the churning cluster, live', { timeout: 120_000 }, async () => {
    const sse = startGroup('/bin/sh', ['-c', printed().curl], userEnv({}));
    streams.push(sse.child);
    // A change of the simulated cluster, not only the first fill: version 2 or later.
    const change = await eventOf(sse.child, sse.output, 'REFRESHED', 2);
    expect(change.added.length + change.removed.length).toBeGreaterThan(0);
  });

  it(
    "the README's curl examples (me, then the SSE subscription over POST) work as printed",
    { timeout: 120_000 },
    async () => {
      const { token, origin } = printed();
      const env = userEnv({ TOKEN: token });
      const me = (await readmeBlock('Start in two commands', 'me')).replaceAll('http://127.0.0.1:4000', origin);
      const answer = await run('/bin/sh', ['-c', me], { env });
      expect(JSON.parse(answer.stdout)).toMatchObject({ data: { me: { name: 'admin' } } });

      const sseBlock = (await readmeBlock('Start in two commands', 'sse')).replaceAll('http://127.0.0.1:4000', origin);
      const sse = startGroup('/bin/sh', ['-c', sseBlock], env);
      streams.push(sse.child);
      expect((await eventOf(sse.child, sse.output, 'SYNC', 0)).kind).toBe('SYNC');
    },
  );

  it('allows loopback for the simulator alone: another loopback endpoint stays HOST_NOT_ALLOWED', async () => {
    const { token, origin } = printed();
    const res = await fetch(`${origin}/graphql`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({
        query:
          'mutation { createNode(input: { name: "other", host: "127.0.0.1", port: 1, tokenId: "root@pam!x", tokenSecret: "s" }) { id } }',
      }),
    });
    const body = (await res.json()) as { errors?: Array<{ extensions: { code: string } }> };
    expect(body.errors?.[0]?.extensions.code).toBe('HOST_NOT_ALLOWED');
  });
});
