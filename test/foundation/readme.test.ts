import { execFile } from 'node:child_process';
import { access, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { docBlock, readmeBlock, ROOT, startGroup, stopGroup, userEnv, waitForOutput } from '../support/readme.js';

const run = promisify(execFile);

describe("README's first run", () => {
  const started: Array<ReturnType<typeof startGroup>> = [];
  const dirs: string[] = [];
  afterAll(async () => {
    for (const s of started) stopGroup(s.child);
    for (const d of dirs) await rm(d, { recursive: true, force: true });
  });

  it('links only to files of the repository (a clone has nothing beside it) and to anchors it has', async () => {
    const readme = await readFile(path.join(ROOT, 'README.md'), 'utf8');
    const anchors = new Set(
      [...readme.matchAll(/^#+ (.+)$/gm)].map((m) =>
        m[1]!
          .toLowerCase()
          .replace(/[^\w\- ]/g, '')
          .replace(/ /g, '-'),
      ),
    );
    for (const [, target] of readme.matchAll(/\]\(([^)\s]+)\)/g)) {
      if (/^https?:/.test(target!)) continue;
      if (target!.startsWith('#')) {
        expect(anchors, target).toContain(target!.slice(1));
        continue;
      }
      const file = path.resolve(ROOT, target!.split('#')[0]!);
      expect(file.startsWith(ROOT + path.sep), `${target} points outside the repository`).toBe(true);
      await access(file);
    }
  });

  it(
    '"npm install" then "npm start": the server starts as printed and the curl example answers with the printed token',
    { timeout: 120_000 },
    async () => {
      expect((await readmeBlock('Start in two commands', 'start')).trim().split('\n')).toEqual([
        'npm install',
        'npm start',
      ]);
      const dataDir = await mkdtemp(path.join(tmpdir(), 'pvg-readme-'));
      dirs.push(dataDir);
      const server = startGroup('npm', ['start'], userEnv({ PVEGRAPH_DATA_DIR: dataDir, PORT: '0' }));
      started.push(server);
      const listening = await waitForOutput(
        server.child,
        server.output,
        /GraphiQL at (http:\/\/[^\s"]+)\/graphql/,
        'listening',
      );
      const token = /^\s+(pvg_[A-Za-z0-9_-]{43})$/m.exec(server.output())?.[1];
      expect(token, server.output()).toBeDefined();
      const me = (await readmeBlock('Start in two commands', 'me')).replaceAll('http://127.0.0.1:4000', listening[1]!);
      const answer = await run('/bin/sh', ['-c', me], { env: userEnv({ TOKEN: token! }) });
      expect(JSON.parse(answer.stdout)).toMatchObject({ data: { me: { name: 'admin' } } });
    },
  );

  it(
    "the simulator's control examples answer 2xx against `npm run sim` in its default mode",
    { timeout: 120_000 },
    async () => {
      const sim = startGroup('npm', ['run', 'sim', '--', '--port', '0'], userEnv({}));
      started.push(sim);
      const listening = await waitForOutput(
        sim.child,
        sim.output,
        /listening on https:\/\/127\.0\.0\.1:(\d+)\/api2\/json/,
        'listening',
      );
      const block = (await docBlock('simulator.md', 'sim-control'))
        .replaceAll('127.0.0.1:8006', `127.0.0.1:${listening[1]}`)
        // -f: an HTTP error (e.g. a 404 for a node the default mode does not have) fails the line.
        .replaceAll('curl -k', 'curl -fsSk');
      await run('/bin/sh', ['-ec', block]);
    },
  );
});
