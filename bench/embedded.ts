/**
 * Scenario 0: the embedded server as a newcomer starts it (`npm start`, no DATABASE_URL, no
 * REDIS_URL), against a baseline started the same way (bench/embedded-baseline.mjs: PGlite
 * opened as pvegraph opens it plus a bare graphql-yoga "hello" server): first start (a new
 * data directory: initdb) and steady RSS after 1,000 requests, side by side; also a clean
 * install's time (`npm ci` of this commit in a scratch directory) and the data directory's
 * size.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Simulator } from '../src/sim/index.js';
import { fmt, freePort, gqlOk, pool, ROOT, rssKb, sleep, START_NODE_ARGS, stopChild, track } from './lib.js';

/** One row of a scenario's table in BENCHMARKS.md (run.ts prints and writes them). */
export interface ScenarioRow {
  scenario: number;
  metric: string;
  server: string;
  baseline: string;
  ratio: string;
  goal: string;
  status: 'PASS' | 'MISS' | '—';
}

interface Started {
  pid: number;
  graphqlUrl: string;
  startMs: number;
  stdout: () => string;
  stop: () => Promise<void>;
}

const REQUESTS = 1_000;
const START_GOAL = 1.5;
const RSS_GOAL = 1.3;

/** Spawns `script` as `npm start` runs dist/main.js and times it until its "listening" line. */
async function startTimed(script: string, dataDir: string, env: Record<string, string> = {}): Promise<Started> {
  const port = await freePort();
  const t0 = performance.now();
  const child = track(
    spawn(process.execPath, [...START_NODE_ARGS, script], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/tmp',
        HOST: '127.0.0.1',
        PORT: String(port),
        PVEGRAPH_DATA_DIR: dataDir,
        ...env,
      },
    }),
  );
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  await new Promise<void>((resolve, reject) => {
    const check = () => {
      if (!/listening/.test(out)) return;
      child.stdout!.off('data', check);
      resolve();
    };
    child.stdout!.on('data', check);
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}:\n${out}`)));
  });
  return {
    pid: child.pid!,
    graphqlUrl: `http://127.0.0.1:${port}/graphql`,
    startMs: performance.now() - t0,
    stdout: () => out,
    stop: () => stopChild(child, 15_000),
  };
}

/** RSS once it stops moving (the collector settles after the load). */
async function steadyRssKb(pid: number): Promise<number> {
  await sleep(2_000);
  return rssKb(pid);
}

function dirBytes(dir: string): number {
  let total = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, entry.name);
    total += entry.isDirectory() ? dirBytes(p) : statSync(p).size;
  }
  return total;
}

/** `npm ci` of HEAD (git archive) in a scratch directory: what a fresh clone's install costs here (npm's cache warm). */
function cleanInstallSeconds(): number {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'pvg-bench-install-'));
  try {
    execFileSync('sh', ['-c', `git -C "${ROOT}" archive HEAD | tar -x -C "${dir}"`]);
    const t0 = performance.now();
    execFileSync('npm', ['ci', '--no-audit', '--no-fund', '--prefer-offline'], { cwd: dir, stdio: 'ignore' });
    return (performance.now() - t0) / 1000;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function scenario0(
  sim: Simulator,
  row: (r: ScenarioRow) => void,
  note: (s: number, text: string) => void,
): Promise<void> {
  console.log('\n== Scenario 0: embedded first start and footprint');
  const scratch = mkdtempSync(path.join(os.tmpdir(), 'pvg-bench-s0-'));
  try {
    // Baseline first, then the server, each on a new data directory (both run initdb).
    const base = await startTimed(path.join(ROOT, 'bench/embedded-baseline.mjs'), path.join(scratch, 'baseline'));
    const baseAfterStart = rssKb(base.pid);
    await pool(
      Array.from({ length: REQUESTS }, (_, i) => i),
      4,
      () => gqlOk(base.graphqlUrl, '', '{ hello }'),
    );
    const baseSteady = await steadyRssKb(base.pid);
    await base.stop();

    const dataDir = path.join(scratch, 'server');
    const server = await startTimed(path.join(ROOT, 'dist/main.js'), dataDir, {
      LOG_LEVEL: 'info',
      ALLOW_LOOPBACK_NODE_HOSTS: 'true',
      RATE_LIMIT_PROXMOX_PER_MIN: '0',
    });
    const serverAfterStart = rssKb(server.pid);
    const token = /^\s+(pvg_[A-Za-z0-9_-]{43})$/m.exec(server.stdout())?.[1];
    if (!token) throw new Error(`scenario 0: no admin token printed:\n${server.stdout()}`);
    const { createNode } = await gqlOk<{ createNode: { id: string } }>(
      server.graphqlUrl,
      token,
      'mutation($i:CreateNodeInput!){createNode(input:$i){id}}',
      {
        i: {
          name: 's0',
          host: sim.host,
          port: sim.port,
          tokenId: sim.token.id,
          tokenSecret: sim.token.secret,
          tlsFingerprint: sim.fingerprint,
        },
      },
    );
    await pool(
      Array.from({ length: REQUESTS }, (_, i) => i),
      4,
      () =>
        gqlOk(server.graphqlUrl, token, 'query($n:ID!){vmidsTaken(nodeId:$n){taken reserved version}}', {
          n: createNode.id,
        }),
    );
    const serverSteady = await steadyRssKb(server.pid);
    await server.stop();
    // A second start on the same directory (no initdb): what every later start costs.
    const again = await startTimed(path.join(ROOT, 'dist/main.js'), dataDir, { LOG_LEVEL: 'info' });
    const againRss = rssKb(again.pid);
    await again.stop();
    const dataBytes = dirBytes(dataDir);

    const startRatio = server.startMs / base.startMs;
    const rssRatio = serverSteady / baseSteady;
    row({
      scenario: 0,
      metric: 'first start (new data directory: initdb) → listening',
      server: `${fmt(server.startMs / 1000, 2)} s`,
      baseline: `${fmt(base.startMs / 1000, 2)} s`,
      ratio: `${startRatio.toFixed(2)}×`,
      goal: `≤ ${START_GOAL}× baseline`,
      status: startRatio <= START_GOAL ? 'PASS' : 'MISS',
    });
    row({
      scenario: 0,
      metric: 'RSS right after the first start',
      server: `${fmt(serverAfterStart / 1024, 0)} MB`,
      baseline: `${fmt(baseAfterStart / 1024, 0)} MB`,
      ratio: `${(serverAfterStart / baseAfterStart).toFixed(2)}×`,
      goal: '',
      status: '—',
    });
    row({
      scenario: 0,
      metric: `steady RSS after ${REQUESTS} requests (server: vmidsTaken of one simulated node; baseline: { hello }), 4 in flight`,
      server: `${fmt(serverSteady / 1024, 0)} MB`,
      baseline: `${fmt(baseSteady / 1024, 0)} MB`,
      ratio: `${rssRatio.toFixed(2)}×`,
      goal: `≤ ${RSS_GOAL}× baseline`,
      status: rssRatio <= RSS_GOAL ? 'PASS' : 'MISS',
    });
    row({
      scenario: 0,
      metric: 'second start on the same data directory → listening',
      server: `${fmt(again.startMs / 1000, 2)} s, RSS ${fmt(againRss / 1024, 0)} MB`,
      baseline: '—',
      ratio: '—',
      goal: '',
      status: '—',
    });
    row({
      scenario: 0,
      metric: 'data directory size after the run (PGlite, key, lock)',
      server: `${fmt(dataBytes / 2 ** 20, 1)} MB`,
      baseline: '—',
      ratio: '—',
      goal: '',
      status: '—',
    });
    if (process.env.BENCH_S0_INSTALL !== '0') {
      const seconds = cleanInstallSeconds();
      row({
        scenario: 0,
        metric:
          '`npm ci` of this commit in a scratch directory (npm cache warm; includes prisma generate, codegen, tsc)',
        server: `${fmt(seconds, 1)} s`,
        baseline: '—',
        ratio: '—',
        goal: '',
        status: '—',
      });
    }
    note(
      0,
      `both sides are started with the node flags of \`npm start\` (${START_NODE_ARGS.join(' ')}) and run compiled JavaScript; the baseline opens PGlite with pvegraph's own openPglite (16 MB shared buffers, initdb in a child, WebAssembly on Liftoff), so the ratios are what pvegraph adds on top of PGlite and a bare Yoga. Start times run from spawn to the "listening" line. BENCH_S0_INSTALL=0 skips the install.`,
    );
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
}
