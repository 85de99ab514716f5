/**
 * pvegraph benchmark orchestrator: `npm run bench [-- 1 3 5]`.
 *
 * Creates its own database (pvgbench_<ts>) and Redis key prefix, starts the HTTPS Proxmox
 * simulator in this process, spawns the server(s) and the baselines as child processes, drives
 * load from here or from child processes (never inside the server), prints every figure next
 * to a baseline measured in the same run, and updates BENCHMARKS.md. Loopback only. Cleans up
 * (children, database, Redis keys) whatever happens.
 *
 * Scenario 0 starts the embedded server (and its baseline) on scratch data directories and
 * runs `npm ci` of HEAD in a scratch directory (BENCH_S0_INSTALL=0 skips it).
 *
 * Scenario 6 starts its own two instances with VMID_WATCH_INTERVAL_S=1 and creates guests in
 * the simulator behind pvegraph's back.
 *
 * env: BENCH_SECONDS (8) per autocannon run · BENCH_ROUNDS (2) · BENCH_CONNECTIONS (32) ·
 *      BENCH_SUBSCRIBERS (10000) · BENCH_SAMPLES (200, scenario 3) · BENCH_PROFILE=1 (server
 *      children run with --cpu-prof into /tmp/bench-prof-<ts>) · BENCH_NO_WRITE=1 (do not touch
 *      BENCHMARKS.md) · BENCH_DATABASE_URL / BENCH_REDIS_URL (admin URLs, loopback only) ·
 *      BENCH_SERVER_ROOT (start the server from a scratch copy, to measure a prototyped patch) ·
 *      BENCH_CLUSTER=0 (scenarios 3 and 5 on single Redis only; by default each also runs on a
 *      local Redis Cluster of three masters with one replica each, ports 7140–7145, started
 *      and stopped by the bench)
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import autocannon, { type Request, type Result } from 'autocannon';
import { type Client, createClient } from 'graphql-ws';
import { Cluster, Redis } from 'ioredis';
import pg from 'pg';
import { Agent, request } from 'undici';
import WebSocket from 'ws';
import { AuthService } from '../src/auth/auth-service.js';
import { openPostgres, type Database } from '../src/db/database.js';
import { migrate } from '../src/db/migrate.js';
import { type Simulator, startSimulator } from '../src/sim/index.js';
import type { RemoteSim } from './sim-process.js';
import { scenario0, type ScenarioRow } from './embedded.js';
import * as vmidScripts from '../src/vmids/redis-scripts.js';
import { deleteKeysWithPrefix } from '../test/support/redis-keys.js';
import { type RedisTopology, startRedisCluster } from '../test/support/redis-topologies.js';
import {
  dist,
  type Dist,
  fmt,
  forkTs,
  freePort,
  gqlOk,
  gqlVia,
  killAll,
  median,
  nextMessage,
  now,
  pacedLoad,
  SLOW_MS,
  type PacedLoadResult,
  machineSteadiness,
  machineSteal,
  serverVitals,
  pool,
  processCpuMs,
  cpuSpent,
  pidsNamed,
  redisOnOwnCore,
  ROOT,
  rssKb,
  type ServerChild,
  sleep,
  spawnServer,
  stopChild,
} from './lib.js';

// ------------------------------------------------------------------ settings
const SECONDS = num('BENCH_SECONDS', 8);
const ROUNDS = num('BENCH_ROUNDS', 2);
const CONNECTIONS = num('BENCH_CONNECTIONS', 32);
const SUBSCRIBERS = num('BENCH_SUBSCRIBERS', 10_000);
const SAMPLES = num('BENCH_SAMPLES', 200);
/** Length of the machine-steadiness probe before scenario 1's paced runs. */
const STEADINESS_S = 4;
const PROFILE = process.env.BENCH_PROFILE === '1';
const ADMIN_PG = process.env.BENCH_DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres';
const REDIS_URL = process.env.BENCH_REDIS_URL ?? 'redis://127.0.0.1:6379';
const ALL = [0, 1, 2, 3, 4, 5, 6];
const selected = (() => {
  const args = process.argv
    .slice(2)
    .map(Number)
    .filter((n) => ALL.includes(n));
  return args.length ? [...new Set(args)].sort() : ALL;
})();

function num(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number (got "${v}")`);
  return n;
}

for (const u of [ADMIN_PG, REDIS_URL]) {
  const host = new URL(u).hostname;
  if (!['127.0.0.1', 'localhost', '::1', '[::1]'].includes(host))
    throw new Error(`bench targets loopback only (got ${host})`);
}

// ------------------------------------------------------------------ results
type Row = ScenarioRow;
const rows: Row[] = [];
const notes = new Map<number, string[]>();
function row(r: Row) {
  rows.push(r);
  const tag = r.status === '—' ? '    ' : r.status;
  console.log(
    `  [${tag}] ${r.metric}: server ${r.server} | baseline ${r.baseline} | ratio ${r.ratio}${r.goal ? ` | goal ${r.goal}` : ''}`,
  );
}
function note(s: number, text: string) {
  notes.set(s, [...(notes.get(s) ?? []), text]);
  console.log(`  note: ${text}`);
}
const ratio = (a: number, b: number, digits = 2) =>
  b > 0 && Number.isFinite(a) ? `${(a / b).toFixed(digits)}×` : 'n/a';
const ms = (n: number) => `${fmt(n, 2)} ms`;
/**
 * How a paced run's slow answers cluster: requests due within STALL_GAP_MS of each other count
 * as one stall, reported with the span of due times it covers and their sum (the share of the
 * run spent in stalls). At ~10,000 req/s, slow answers more frequent than ~50/s would merge
 * into one long stall, so a high share says more than the count.
 */
const STALL_GAP_MS = 20;
function slowTail(r: PacedLoadResult): string {
  const due = [...r.slowDueAt].sort((x, y) => x - y);
  if (due.length === 0) return 'none';
  const spans: number[] = [];
  let first = due[0]!;
  for (let i = 1; i <= due.length; i++) {
    if (i === due.length || due[i]! - due[i - 1]! > STALL_GAP_MS) {
      spans.push(due[i - 1]! - first);
      if (i < due.length) first = due[i]!;
    }
  }
  const share = (100 * due.length) / Math.max(1, r.latencies.length);
  const spanned = spans.reduce((a, b) => a + b, 0);
  return `${due.length} (${fmt(share, 2)} %) in ${spans.length} stalls spanning ${fmt(spanned, 0)} ms of due times (the longest ${fmt(Math.max(...spans), 0)} ms), ${r.slowWaitedForConnection} of them queued in the generator for over half their time`;
}
const distStr = (d: Dist) => `p50 ${fmt(d.p50, 1)} / p99 ${fmt(d.p99, 1)} / max ${fmt(d.max, 1)} ms`;

// ------------------------------------------------------------------ environment
const ts = `${Date.now().toString(36)}_${randomBytes(2).toString('hex')}`;
const dbName = `pvgbench_${ts}`;
const prefix = `pvgbench_${ts}:`;
const encryptionKey = randomBytes(32).toString('base64');
const profDir = `/tmp/bench-prof-${ts}`;
const dbUrl = (() => {
  const u = new URL(ADMIN_PG);
  u.pathname = `/${dbName}`;
  return u.toString();
})();

let db: Database | null = null;
let auth: AuthService;
const sims: Simulator[] = [];
const servers: ServerChild[] = [];

async function adminQuery(sql: string) {
  const c = new pg.Client({ connectionString: ADMIN_PG });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

async function setup() {
  await adminQuery(`CREATE DATABASE "${dbName}"`);
  db = await openPostgres(dbUrl, { poolMax: 4 });
  await db.withSession((s) => migrate(s));
  auth = new AuthService(db.prisma, { cacheTtlMs: 0 });
  if (PROFILE || WINDOW) mkdirSync(profDir, { recursive: true });
}

let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  await Promise.allSettled(servers.map((s) => stopChild(s.child)));
  killAll();
  await Promise.allSettled(sims.map((s) => s.stop()));
  await benchCluster?.stop().catch((e: Error) => console.error(`could not stop the bench cluster: ${e.message}`));
  await db?.close().catch(() => undefined);
  await adminQuery(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`).catch((e: Error) =>
    console.error(`could not drop ${dbName}: ${e.message}`),
  );
  const redis = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  try {
    await redis.connect();
    await deleteKeysWithPrefix(redis, prefix);
  } catch (e) {
    console.error(`could not clean Redis prefix ${prefix}: ${(e as Error).message}`);
  } finally {
    redis.disconnect();
  }
}

const WINDOW = !!process.env.BENCH_PROFILE_WINDOW;
/** Extra node flags of a server child: whole-run or per-phase profiling, or BENCH_NODE_ARGS. */
function serverNodeArgs(name: string): string[] {
  const args = process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  if (PROFILE) args.push('--cpu-prof', `--cpu-prof-dir=${profDir}/${name}`);
  if (WINDOW) {
    mkdirSync(`${profDir}/${name}`, { recursive: true });
    args.push('--import', path.join(ROOT, 'bench/profile-window.mjs'));
  }
  return args;
}

async function startServer(name: string, env: Record<string, string> = {}): Promise<ServerChild> {
  const s = await spawnServer(
    {
      databaseUrl: dbUrl,
      redisUrl: REDIS_URL,
      redisKeyPrefix: prefix,
      encryptionKey,
      nodeArgs: serverNodeArgs(name),
      extraEnv: { ...env, ...(WINDOW ? { BENCH_PROFILE_DIR: `${profDir}/${name}` } : {}) },
    },
    name,
  );
  servers.push(s);
  return s;
}
async function stopServer(s: ServerChild) {
  await stopChild(s.child, 15_000);
  servers.splice(servers.indexOf(s), 1);
}

async function startSim(guests: number, clusterName?: string): Promise<Simulator> {
  const sim = await startSimulator({ host: '127.0.0.1', port: 0, guests, ...(clusterName ? { clusterName } : {}) });
  sims.push(sim);
  return sim;
}

let userSeq = 0;
async function createUser(): Promise<{ token: string; userId: string }> {
  return auth.createUser(`bench-${ts}-${userSeq++}`);
}

/** Simulators in a process of their own (bench/sim-process.ts): `start` one per guest count. */
function simProcess() {
  const child = forkTs('bench/sim-process.ts');
  return {
    pid: child.pid!,
    async start(guests: number[]): Promise<RemoteSim[]> {
      child.send({ type: 'start', guests });
      return (await nextMessage<{ sims: RemoteSim[] }>(child, (m) => m.type === 'started')).sims;
    },
    close: () => void child.send({ type: 'close' }),
  };
}

const CREATE_NODE = 'mutation($i:CreateNodeInput!){createNode(input:$i){id}}';
async function createNode(
  server: ServerChild,
  token: string,
  sim: Pick<Simulator, 'host' | 'port' | 'fingerprint'> & { token: { id: string; secret: string } },
): Promise<string> {
  const d = await gqlOk<{ createNode: { id: string } }>(server.graphqlUrl, token, CREATE_NODE, {
    i: {
      name: `pve-${randomBytes(4).toString('hex')}`,
      host: sim.host,
      port: sim.port,
      tokenId: sim.token.id,
      tokenSecret: sim.token.secret,
      tlsFingerprint: sim.fingerprint,
    },
  });
  return d.createNode.id;
}

const VMIDS_TAKEN = 'query($n:ID!){vmidsTaken(nodeId:$n){taken reserved version}}';
const INVALIDATE = 'mutation($n:ID!){invalidateVmidCache(nodeId:$n)}';

function cannon(opts: Parameters<typeof autocannon>[0]): Promise<Result> {
  return autocannon({ timeout: 10, ...opts });
}
function checkCannon(label: string, r: Result) {
  if (r.errors || r.timeouts || r.non2xx)
    console.log(`  ! ${label}: errors ${r.errors}, timeouts ${r.timeouts}, non-2xx ${r.non2xx}`);
}

// ------------------------------------------------------------------ scenario 1
async function scenario1(sim: Simulator) {
  console.log('\n== 1. vmidsTaken, cache hit, authenticated');
  const server = await startServer('s1');
  const { token } = await createUser();
  const nodeId = await createNode(server, token, sim);
  const body = JSON.stringify({ query: VMIDS_TAKEN, variables: { n: nodeId } });
  const fromServer = await gqlOk(server.graphqlUrl, token, VMIDS_TAKEN, { n: nodeId }); // warms the cache

  const port = await freePort();
  const baseline = forkTs('bench/baseline-server.ts', [], {
    PORT: String(port),
    DATABASE_URL: dbUrl,
    REDIS_URL,
    REDIS_KEY_PREFIX: prefix,
  });
  await nextMessage(baseline, (m) => m?.type === 'listening');
  const baseUrl = `http://127.0.0.1:${port}/graphql`;
  const fromBaseline = await gqlOk(baseUrl, token, VMIDS_TAKEN, { n: nodeId });
  if (JSON.stringify(fromBaseline) !== JSON.stringify(fromServer)) {
    throw new Error(
      `baseline answers differently: ${JSON.stringify(fromBaseline).slice(0, 200)} vs ${JSON.stringify(fromServer).slice(0, 200)}`,
    );
  }

  const headers = { 'content-type': 'application/json', authorization: `Bearer ${token}` };
  const run = (url: string, extra: Partial<Parameters<typeof autocannon>[0]> = {}) =>
    cannon({ url, method: 'POST', headers, body, connections: CONNECTIONS, duration: SECONDS, ...extra });

  // Warm-up (JIT, connection pools): 2 s each, not counted.
  await run(baseUrl, { duration: 2 });
  await run(server.graphqlUrl, { duration: 2 });
  const b: Result[] = [];
  const s: Result[] = [];
  // CPU per answered request of each server process: steadier than req/s on a shared VM, and
  // it says where a gap comes from (the load generator shares the two cores).
  const cpuPerRequest = { server: [] as number[], baseline: [] as number[] };
  const measured = async (pid: number, url: string, into: number[]) => {
    const before = processCpuMs(pid);
    const r = await run(url);
    into.push(((processCpuMs(pid) - before) * 1000) / Math.max(1, r.requests.total));
    return r;
  };
  for (let i = 0; i < ROUNDS; i++) {
    const rb = await measured(baseline.pid!, baseUrl, cpuPerRequest.baseline);
    checkCannon('baseline', rb);
    b.push(rb);
    const rs = await measured(server.pid, server.graphqlUrl, cpuPerRequest.server);
    checkCannon('server', rs);
    s.push(rs);
    console.log(
      `  round ${i + 1}: baseline ${fmt(rb.requests.average, 0)} req/s (${fmt(cpuPerRequest.baseline.at(-1)!, 0)} µs CPU/req), server ${fmt(rs.requests.average, 0)} req/s (${fmt(cpuPerRequest.server.at(-1)!, 0)} µs CPU/req)`,
    );
  }
  const avg = (rs: Result[], f: (r: Result) => number) => rs.reduce((a, r) => a + f(r), 0) / rs.length;
  const sRps = avg(s, (r) => r.requests.average);
  const bRps = avg(b, (r) => r.requests.average);
  row({
    scenario: 1,
    metric: `req/s at ${CONNECTIONS} connections (mean of ${ROUNDS} × ${SECONDS} s)`,
    server: fmt(sRps, 0),
    baseline: fmt(bRps, 0),
    ratio: ratio(sRps, bRps),
    goal: '≥ 0.6× baseline',
    status: sRps >= 0.6 * bRps ? 'PASS' : 'MISS',
  });
  const meanOf = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
  const [cpuS, cpuB] = [meanOf(cpuPerRequest.server), meanOf(cpuPerRequest.baseline)];
  row({
    scenario: 1,
    metric: 'CPU time per request (server process, user+system)',
    server: `${fmt(cpuS, 0)} µs`,
    baseline: `${fmt(cpuB, 0)} µs`,
    ratio: ratio(cpuS, cpuB),
    goal: '',
    status: '—',
  });
  for (const p of ['p50', 'p99'] as const) {
    const [server, baseline] = [avg(s, (r) => r.latency[p]), avg(b, (r) => r.latency[p])];
    row({
      scenario: 1,
      metric: `latency ${p} at full load`,
      server: ms(server),
      baseline: ms(baseline),
      ratio: ratio(server, baseline),
      goal: '',
      status: '—',
    });
  }

  const rate = Math.max(1, Math.floor(sRps / 2));
  // Whether the host lets the VM run steadily just now: after a second for the servers to
  // finish what the load left (GC), every process of the bench is idle.
  await sleep(1_000);
  const steady = await machineSteadiness(STEADINESS_S, os.availableParallelism());
  // The goal is judged on an open-loop paced run (see pacedLoad); autocannon's overallRate
  // figure is kept for reference, but it measures bursts at full speed.
  const vitals = await serverVitals(server);
  const steal = machineSteal();
  const pacedS = await pacedLoad({
    url: server.graphqlUrl,
    headers,
    body,
    rate,
    seconds: SECONDS,
    connections: CONNECTIONS,
  });
  const pacedVitals = await vitals();
  const pacedSteal = steal();
  const pacedB = await pacedLoad({ url: baseUrl, headers, body, rate, seconds: SECONDS, connections: CONNECTIONS });
  const ps = dist(pacedS.latencies);
  const pb = dist(pacedB.latencies);
  row({
    scenario: 1,
    metric: `p99 at half the server's peak: ${rate} req/s open-loop, evenly paced`,
    server: `${ms(ps.p99)} (p50 ${ms(ps.p50)})`,
    baseline: `${ms(pb.p99)} (p50 ${ms(pb.p50)})`,
    ratio: ratio(ps.p99, pb.p99),
    goal: 'server p99 < 10 ms',
    status: ps.p99 < 10 && pacedS.errors === 0 ? 'PASS' : 'MISS',
  });
  const hs = await run(server.graphqlUrl, { overallRate: rate });
  checkCannon('server @ half', hs);
  const hb = await run(baseUrl, { overallRate: rate });
  checkCannon('baseline @ same rate', hb);
  row({
    scenario: 1,
    metric: `p99 at ${rate} req/s with autocannon overallRate (bursty, reference)`,
    server: ms(hs.latency.p99),
    baseline: ms(hb.latency.p99),
    ratio: ratio(hs.latency.p99, hb.latency.p99),
    goal: '',
    status: '—',
  });
  // A client with a revoked or mistyped token (a dashboard left running, a scanner) must not
  // cost the server more than one with a valid token does.
  const refusedHeaders = { ...headers, authorization: `Bearer pvg_${'R'.repeat(43)}` };
  // Each request a document nobody has sent before (a new operation name): what a scanner
  // sends, and what neither the prepared path nor Yoga's parse cache has seen. The server
  // runs with the default per-address budget for such requests (RATE_LIMIT_ANONYMOUS_PER_MIN),
  // so after the first ones of the minute it answers 429 (finding 25).
  let unseen = 0;
  const unseenDocuments = [
    {
      setupRequest: (req: Request) => ({
        ...req,
        body: JSON.stringify({ query: `query Probe${unseen++} { me { id } }` }),
      }),
    },
  ];
  const refused = async (pid: number, url: string, extra: Partial<Parameters<typeof autocannon>[0]> = {}) => {
    await run(url, { headers: refusedHeaders, duration: 1, ...extra }); // warm-up: this path has not run yet
    const before = processCpuMs(pid);
    const r = await run(url, { headers: refusedHeaders, duration: Math.max(2, SECONDS / 2), ...extra });
    const statuses = Object.fromEntries(
      Object.entries(r.statusCodeStats ?? {}).map(([code, { count }]) => [code, count]),
    );
    const wrong = Object.entries(statuses).reduce(
      (n, [code, count]) => (code === '401' || code === '429' ? n : n + count),
      0,
    );
    if (wrong > 0 || r.errors)
      console.log(`  ! refused run against ${url}: ${wrong} answers other than 401 or 429, ${r.errors} errors`);
    return {
      rps: r.requests.average,
      cpuUs: ((processCpuMs(pid) - before) * 1000) / Math.max(1, r.requests.total),
      statuses,
    };
  };
  const answers = (statuses: Record<string, number>) =>
    Object.entries(statuses)
      .map(([code, count]) => `${count} × ${code}`)
      .join(', ');
  const refusedB = await refused(baseline.pid!, baseUrl);
  const refusedS = await refused(server.pid, server.graphqlUrl);
  row({
    scenario: 1,
    metric: `unknown token (401 UNAUTHENTICATED): req/s at ${CONNECTIONS} connections, CPU per request`,
    server: `${fmt(refusedS.rps, 0)} req/s, ${fmt(refusedS.cpuUs, 0)} µs`,
    baseline: `${fmt(refusedB.rps, 0)} req/s, ${fmt(refusedB.cpuUs, 0)} µs`,
    ratio: ratio(refusedS.rps, refusedB.rps),
    goal: '',
    status: '—',
  });
  const unseenB = await refused(baseline.pid!, baseUrl, { requests: unseenDocuments });
  const unseenS = await refused(server.pid, server.graphqlUrl, { requests: unseenDocuments });
  row({
    scenario: 1,
    metric: `unknown token, a new document each request (401, then 429 past the address's budget): req/s, CPU per request`,
    server: `${fmt(unseenS.rps, 0)} req/s, ${fmt(unseenS.cpuUs, 0)} µs`,
    baseline: `${fmt(unseenB.rps, 0)} req/s, ${fmt(unseenB.cpuUs, 0)} µs`,
    ratio: ratio(unseenS.rps, unseenB.rps),
    goal: '',
    status: '—',
  });
  // A made-up token with each request, on the document the server knows: without a charge
  // per lookup that finds nothing, each would be a database query (finding 25).
  let madeUp = 0;
  const madeUpTokens = [
    {
      setupRequest: (req: Request) => ({
        ...req,
        headers: { ...req.headers, authorization: `Bearer pvg_${String(madeUp++).padStart(43, 'M')}` },
      }),
    },
  ];
  const madeUpB = await refused(baseline.pid!, baseUrl, { requests: madeUpTokens });
  const madeUpS = await refused(server.pid, server.graphqlUrl, { requests: madeUpTokens });
  row({
    scenario: 1,
    metric: `a made-up token each request (401, then 429 past the address's budget): req/s, CPU per request`,
    server: `${fmt(madeUpS.rps, 0)} req/s, ${fmt(madeUpS.cpuUs, 0)} µs`,
    baseline: `${fmt(madeUpB.rps, 0)} req/s, ${fmt(madeUpB.cpuUs, 0)} µs`,
    ratio: ratio(madeUpS.rps, madeUpB.rps),
    goal: '',
    status: '—',
  });
  note(
    1,
    `a made-up token each request, answers of the measured run: server ${answers(madeUpS.statuses)}; baseline ${answers(madeUpB.statuses)} (it looks each one up).`,
  );
  note(
    1,
    `a new document each request, answers of the measured run: server ${answers(unseenS.statuses)}; baseline ${answers(unseenB.statuses)} (it has no such budget).`,
  );
  note(
    1,
    `paced runs: server ${pacedS.latencies.length}/${pacedS.sent} answered at ${fmt(pacedS.achievedRate, 0)} req/s (${pacedS.errors} errors), baseline ${pacedB.latencies.length}/${pacedB.sent} (${pacedB.errors} errors); max ${ms(ps.max)} vs ${ms(pb.max)}.`,
  );
  const lag = (r: typeof pacedS) => `p99 ${ms(dist(r.sendLags).p99)}, max ${ms(dist(r.sendLags).max)}`;
  const loop = (r: typeof pacedS) => `p99 ${ms(r.loopDelay.p99)}, max ${ms(r.loopDelay.max)}`;
  note(
    1,
    `the generator's own lateness (send time − due time, counted in the latency): server run ${lag(pacedS)}, baseline run ${lag(pacedB)}; its event loop's delay (a response read late by as much): server run ${loop(pacedS)}, baseline run ${loop(pacedB)}.`,
  );
  note(1, `answers over ${SLOW_MS} ms: server ${slowTail(pacedS)}; baseline ${slowTail(pacedB)}.`);
  note(
    1,
    `the machine just before the paced runs, idle (fixed work on each of its ${os.availableParallelism()} cores for ${STEADINESS_S} s, counted per 100 ms): the slowest window did ${fmt(steady.slowest, 2)}× the median window's work; in ${steady.jointDips} of ${steady.windows} windows every core did under 0.8× at once (the whole VM slowed; finding 27), missing ${fmt(steady.jointLostMs, 0)} ms of each core's work.`,
  );
  note(
    1,
    `the server during its paced run (its warm-up second included), from its /metrics: GC at least ${fmt(pacedVitals.gcMs, 0)} ms in ${pacedVitals.gcPauses} pauses, ${pacedVitals.majorGcs} of them mark-compacts (prom-client counts one collection per batch Node reports), event loop blocked at most ${ms(pacedVitals.longestBlockMs)} at a time, ${pacedVitals.queriesOver10ms} of ${pacedVitals.queries} queries over 10 ms from the start of their execution; CPU stolen from the VM meanwhile: ${fmt(pacedSteal, 0)} ms.`,
  );
  note(
    1,
    "autocannon's overallRate gives each connection a per-second budget that it spends back-to-back, then idles until the next second: its p99 is the p99 of full-speed bursts, so the goal uses the evenly paced open-loop generator (bench/lib.ts pacedLoad in its own process, latency counted from each request's due time).",
  );
  note(
    1,
    `answer: ${fromServer.vmidsTaken.taken.length} taken VMIDs (simulator with ${sim.guests().length} guests); baseline answer byte-identical to the server's.`,
  );

  await stopChild(baseline);
  await stopServer(server);
  return { serverRps: sRps };
}

// ------------------------------------------------------------------ scenario 2
interface Fleet {
  child: ReturnType<typeof forkTs>;
  offset: number;
  /** query: the subscription document (the fleet's default: vmidEvents { kind version }). */
  open(
    url: string,
    groups: Array<{ token: string; nodeId: string | null; count: number }>,
    query?: string,
  ): Promise<{ ok: number; failed: number; errors: string[]; ms: number }>;
  /** addedVmid: only a REFRESHED whose `added` holds it counts as the subscriber's next event. */
  arm(addedVmid?: number): Promise<void>;
  received(timeoutMs: number): Promise<{ times: number[]; groups: number[]; partial: boolean }>;
  close(): Promise<void>;
}

async function startFleet(): Promise<Fleet> {
  const child = forkTs('bench/subscribers.ts', [], {}, ['--max-old-space-size=3072']);
  await nextMessage(child, (m) => m?.type === 'ready');
  // Clock offset child − orchestrator, from the round trip with the smallest delay.
  let best = { rtt: Infinity, offset: 0 };
  for (let i = 0; i < 30; i++) {
    const t = now();
    const p = nextMessage<{ child: number }>(child, (m) => m?.type === 'clock' && m.t === t);
    child.send({ type: 'clock', t });
    const r = await p;
    const back = now();
    if (back - t < best.rtt) best = { rtt: back - t, offset: r.child - (t + back) / 2 };
  }
  return {
    child,
    offset: best.offset,
    async open(url, groups, query) {
      const p = nextMessage<any>(child, (m) => m?.type === 'opened', 300_000);
      child.send({ type: 'open', url, groups, concurrency: 100, ...(query ? { query } : {}) });
      return p;
    },
    async arm(addedVmid) {
      const p = nextMessage(child, (m) => m?.type === 'armed');
      child.send({ type: 'arm', ...(addedVmid !== undefined ? { addedVmid } : {}) });
      await p;
    },
    async received(timeoutMs) {
      try {
        return await nextMessage<any>(child, (m) => m?.type === 'received', timeoutMs);
      } catch {
        const p = nextMessage<any>(child, (m) => m?.type === 'received');
        child.send({ type: 'collect' });
        return p;
      }
    },
    async close() {
      const p = nextMessage(child, (m) => m?.type === 'closed', 120_000);
      child.send({ type: 'close' });
      await p;
    },
  };
}

/** Latencies (ms) of every subscriber: receive time (child clock, corrected) − send time of its group. */
function latencies(fleet: Fleet, r: { times: number[]; groups: number[] }, sentAt: (group: number) => number) {
  const out: number[] = [];
  let missing = 0;
  r.times.forEach((t, i) => {
    if (Number.isNaN(t) || t === null) missing++;
    else out.push(t - fleet.offset - sentAt(r.groups[i]!));
  });
  return { d: dist(out), missing };
}

async function settleRss(pid: number, ms = 2_000) {
  await sleep(ms);
  return rssKb(pid);
}

async function scenario2(sim: Simulator) {
  console.log(`\n== 2. Invalidation fan-out to ${SUBSCRIBERS} graphql-ws subscribers`);
  const server = await startServer('s2');
  const fleet = await startFleet();
  console.log(`  clock offset subscriber process − orchestrator: ${fmt(fleet.offset, 3)} ms (corrected)`);
  const users = 100;
  const perNode = Math.floor(SUBSCRIBERS / users);
  // Every fan-out's trigger (the broadcast POST, the mutations) goes through undici's request,
  // not fetch: on two cores, the trigger's own CPU is taken from the server and the
  // subscribers being measured (gqlVia; finding 23).
  const triggers = new Agent();

  // ---- baseline: bare ws broadcast
  const wsPort = await freePort();
  const wsBase = forkTs('bench/ws-baseline-server.ts', [], { PORT: String(wsPort) });
  await nextMessage(wsBase, (m) => m?.type === 'listening');
  const baseRss0 = await settleRss(wsBase.pid!, 1_000);
  const bo = await fleet.open(`ws://127.0.0.1:${wsPort}/graphql`, [
    { token: 'none', nodeId: null, count: perNode * users },
  ]);
  const baseRss1 = await settleRss(wsBase.pid!);
  console.log(`  baseline: ${bo.ok} subscribed in ${fmt(bo.ms / 1000, 1)} s (${bo.failed} failed)`);
  const broadcast = () =>
    request(`http://127.0.0.1:${wsPort}/broadcast`, { method: 'POST', dispatcher: triggers }).then((r) =>
      r.body.dump(),
    );
  await warmUpRound(fleet, broadcast);
  await fleet.arm();
  const bCpu = cpuWindow([wsBase.pid!, fleet.child.pid!]);
  const bSent = now();
  await broadcast();
  const br = await fleet.received(30_000);
  const bCpuMs = bCpu();
  const bLat = latencies(fleet, br, () => bSent);
  await fleet.close();
  await stopChild(wsBase);
  const baseKb = (baseRss1 - baseRss0) / Math.max(1, bo.ok);

  // ---- phase A: 100 users × 1 node × 100 subscribers
  // Each user's node is a Proxmox of its own (its own certificate, so its own cluster and
  // VMID space): registrations of one simulator would share one space, and every
  // invalidation would reach all subscribers instead of its node's.
  const tenants = await pool(Array.from({ length: users }), 10, async (_, i) => {
    const u = await createUser();
    const own = await startSim(50, `s2-${i}`);
    const nodeId = await createNode(server, u.token, own);
    await gqlOk(server.graphqlUrl, u.token, VMIDS_TAKEN, { n: nodeId });
    return { ...u, nodeId };
  });
  const rss0 = await settleRss(server.pid);
  const ao = await fleet.open(
    server.wsUrl,
    tenants.map((t) => ({ token: t.token, nodeId: t.nodeId, count: perNode })),
  );
  console.log(
    `  phase A: ${ao.ok} subscribed in ${fmt(ao.ms / 1000, 1)} s (${ao.failed} failed${ao.errors.length ? `: ${ao.errors.join('; ')}` : ''})`,
  );
  const rss1 = await settleRss(server.pid);
  const kbPerSub = (rss1 - rss0) / Math.max(1, ao.ok);
  const sentA: number[] = new Array(users);
  const invalidateAll = () =>
    Promise.all(
      tenants.map((t, i) => {
        sentA[i] = now();
        return gqlVia(triggers, server.graphqlUrl, t.token, INVALIDATE, { n: t.nodeId });
      }),
    );
  await warmUpRound(fleet, invalidateAll);
  await fleet.arm();
  profileWindow(server, 'A');
  const aCpu = cpuWindow([server.pid, fleet.child.pid!]);
  const mutA = await invalidateAll();
  const mutErrors = mutA.filter((r) => r.errors?.length).length;
  const ar = await fleet.received(60_000);
  const aCpuMs = aCpu();
  profileWindow(server, 'A');
  const aLat = latencies(fleet, ar, (g) => sentA[g]!);
  await fleet.close();

  // ---- phase B: one node, every subscriber
  const hot = await createUser();
  const hotNode = await createNode(server, hot.token, sim);
  await gqlOk(server.graphqlUrl, hot.token, VMIDS_TAKEN, { n: hotNode });
  const rssB0 = await settleRss(server.pid);
  const bo2 = await fleet.open(server.wsUrl, [{ token: hot.token, nodeId: hotNode, count: perNode * users }]);
  console.log(
    `  phase B: ${bo2.ok} subscribed in ${fmt(bo2.ms / 1000, 1)} s (${bo2.failed} failed${bo2.errors.length ? `: ${bo2.errors.join('; ')}` : ''})`,
  );
  const rssB1 = await settleRss(server.pid);
  await warmUpRound(fleet, () => gqlVia(triggers, server.graphqlUrl, hot.token, INVALIDATE, { n: hotNode }));
  await fleet.arm();
  profileWindow(server, 'B');
  const hCpu = cpuWindow([server.pid, fleet.child.pid!]);
  const sentB = now();
  const mutB = await gqlVia(triggers, server.graphqlUrl, hot.token, INVALIDATE, { n: hotNode });
  const mutBDone = now();
  const hr = await fleet.received(60_000);
  const hCpuMs = hCpu();
  profileWindow(server, 'B');
  const hLat = latencies(fleet, hr, () => sentB);
  await fleet.close();
  fleet.child.kill('SIGTERM');
  await triggers.close();

  const n = perNode * users;
  row({
    scenario: 2,
    metric: `A: delivery latency, 100 nodes × ${perNode} subscribers, 100 invalidations at once`,
    server: distStr(aLat.d),
    baseline: distStr(bLat.d),
    ratio: `p99 ${ratio(aLat.d.p99, bLat.d.p99, 1)}`,
    goal: 'p99 < 250 ms',
    status: aLat.d.p99 < 250 && aLat.missing === 0 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 2,
    metric: `B: delivery latency, 1 node × ${n} subscribers, 1 invalidation`,
    server: distStr(hLat.d),
    baseline: distStr(bLat.d),
    ratio: `p99 ${ratio(hLat.d.p99, bLat.d.p99, 1)}`,
    goal: 'p99 < 250 ms',
    status: hLat.d.p99 < 250 && hLat.missing === 0 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 2,
    metric: `A: server RSS per idle subscriber (${fmt(rss0 / 1024, 0)} → ${fmt(rss1 / 1024, 0)} MB)`,
    server: `${fmt(kbPerSub, 1)} KB`,
    baseline: `${fmt(baseKb, 1)} KB`,
    ratio: ratio(kbPerSub, baseKb, 1),
    goal: '< 30 KB',
    status: kbPerSub < 30 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 2,
    metric: `time to subscribe ${n} (100 in flight)`,
    server: `A ${fmt(ao.ms / 1000, 1)} s, B ${fmt(bo2.ms / 1000, 1)} s`,
    baseline: `${fmt(bo.ms / 1000, 1)} s`,
    ratio: ratio(ao.ms, bo.ms, 1),
    goal: '',
    status: '—',
  });
  note(
    2,
    `missing deliveries: A ${aLat.missing}, B ${hLat.missing}, baseline ${bLat.missing}; failed subscribes: A ${ao.failed}, B ${bo2.failed}, baseline ${bo.failed}; invalidate errors: A ${mutErrors}, B ${mutB.errors?.length ?? 0}.`,
  );
  const cpuStr = (c: number[]) =>
    `server ${fmt(c[0]!, 0)}, subscribers ${fmt(c[1]!, 0)}, orchestrator ${fmt(c[2]!, 0)} ms`;
  note(
    2,
    `CPU used from the trigger until the subscribers reported the last delivery (10 ms ticks): baseline ${cpuStr(bCpuMs)}; A ${cpuStr(aCpuMs)}; B ${cpuStr(hCpuMs)}.`,
  );
  note(
    2,
    `B: the invalidateVmidCache HTTP response took ${ms(mutBDone - sentB)}; baseline /broadcast queues all sends before answering.`,
  );
  note(
    2,
    `memory is measured in phase A only: phase B's subscribers reuse the heap phase A's left behind (RSS ${fmt(rssB0 / 1024, 0)} → ${fmt(rssB1 / 1024, 0)} MB), which says nothing per subscriber.`,
  );
  note(
    2,
    'each measured fan-out (baseline, A, B) follows one unmeasured round of the same fan-out, so the server has compiled its delivery path and the clients hold keep-alive connections, as on a server that has been running.',
  );
  note(
    2,
    `baseline: bare ws server (bench/ws-baseline-server.ts) broadcasting one pre-serialised graphql-transport-ws "next" to all ${n} subscriptions after one POST; the same graphql-ws client fleet receives both. RSS per idle client of the baseline ${fmt(baseRss0 / 1024, 0)} → ${fmt(baseRss1 / 1024, 0)} MB.`,
  );
  await stopServer(server);
}

/**
 * One unmeasured round of a fan-out (trigger, then wait until every subscriber has the event),
 * so the measured round finds a server as one that has been running does: its delivery code
 * compiled by the JIT and its clients' HTTP connections open (keep-alive). The same for the
 * baseline and for both phases.
 */
async function warmUpRound(fleet: Fleet, trigger: () => Promise<unknown>): Promise<void> {
  await fleet.arm();
  await trigger();
  await fleet.received(60_000);
  // The measured round comes next: the orchestrator's garbage (scenario 1's load, the
  // subscribers' reports) is collected now rather than during it, on the cores it measures,
  // and V8's sweeper threads get time to finish after the collection.
  collectGarbage();
  await new Promise((resolve) => setTimeout(resolve, 250));
}

/**
 * CPU time (user + system) the given child processes and this one use from now until the
 * returned function is called: [...children, orchestrator], in ms. Tells where the 2 cores
 * went during a fan-out: the server, the receiving fleet, or the process sending the trigger.
 */
function cpuWindow(pids: number[]): () => number[] {
  const start = pids.map(processCpuMs);
  const self = process.cpuUsage();
  return () => {
    const own = process.cpuUsage(self);
    return [...pids.map((pid, i) => processCpuMs(pid) - start[i]!), (own.user + own.system) / 1000];
  };
}

/** A full collection in this process when node runs with --expose-gc (npm run bench does). */
function collectGarbage(): void {
  (globalThis as { gc?: () => void }).gc?.();
}

/** BENCH_PROFILE_WINDOW names the phases to profile (A, B, reserve-small, …): toggles the server's window profiler (bench/profile-window.mjs). */
function profileWindow(server: ServerChild, phase: string): void {
  if (process.env.BENCH_PROFILE_WINDOW?.includes(phase)) server.child.kill('SIGUSR2');
}

// ------------------------------------------------------------------ scenario 3
async function scenario3(sim: Simulator, variant: RedisVariant = SINGLE) {
  console.log(`\n== 3. Across instances: mutation on A → event on B, vs raw Redis PUBLISH → message${variant.title}`);
  const [a, b] = await Promise.all([
    startServer(`s3${variant.tag}a`, variant.env),
    startServer(`s3${variant.tag}b`, variant.env),
  ]);
  const { token } = await createUser();
  const nodeId = await createNode(a, token, sim);
  await gqlOk(a.graphqlUrl, token, VMIDS_TAKEN, { n: nodeId });

  let waiting: ((t: number, e: { kind: string; version: number }) => void) | null = null;
  const client: Client = createClient({
    url: b.wsUrl,
    webSocketImpl: WebSocket,
    retryAttempts: 0,
    connectionParams: { authorization: `Bearer ${token}` },
  });
  let synced!: () => void;
  const syncP = new Promise<void>((r) => (synced = r));
  client.subscribe<{ vmidEvents: { kind: string; version: number } }>(
    { query: 'subscription($n:ID){vmidEvents(nodeId:$n){kind version}}', variables: { n: nodeId } },
    {
      next: (r) => {
        const t = now();
        const e = r.data!.vmidEvents;
        if (e.kind === 'SYNC') return synced();
        waiting?.(t, e);
      },
      error: (e) => console.error('  subscription error', e),
      complete: () => undefined,
    },
  );
  await syncP;

  const raw3 = await rawPubSub(variant, `${prefix}bench-raw`);
  const pub = raw3;
  let rawWaiting: ((t: number) => void) | null = null;
  raw3.onMessage(() => rawWaiting?.(now()));

  const raw: number[] = [];
  const total: number[] = [];
  const afterResponse: number[] = [];
  const VMID = 90_000;
  const RESERVE = `mutation($n:ID!){reserveVmid(nodeId:$n,vmid:${VMID},ttlSeconds:600){vmid}}`;
  const RELEASE = `mutation($n:ID!){releaseVmid(nodeId:$n,vmid:${VMID})}`;
  // Keep-alive dispatcher for the mutations, like a dashboard backend would have.
  const agent = new Agent({ connections: 1 });
  const mutate = async (query: string) => {
    const res = await request(a.graphqlUrl, {
      method: 'POST',
      dispatcher: agent,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ query, variables: { n: nodeId } }),
    });
    const body = (await res.body.json()) as { errors?: unknown[] };
    if (body.errors) throw new Error(JSON.stringify(body.errors));
  };
  for (let i = 0; i < 10; i++) await mutate(i % 2 === 0 ? RESERVE : RELEASE); // warm-up, ends released

  for (let i = 0; i < SAMPLES; i++) {
    // raw Redis
    {
      const got = new Promise<number>((r) => (rawWaiting = r));
      const t0 = now();
      await pub.publish(`{"i":${i}}`);
      raw.push((await got) - t0);
    }
    // pvegraph: A → Redis → B → WebSocket
    {
      const got = new Promise<number>((r) => (waiting = (t) => r(t)));
      const t0 = now();
      await mutate(i % 2 === 0 ? RESERVE : RELEASE);
      const t1 = now();
      const t2 = await got;
      total.push(t2 - t0);
      afterResponse.push(t2 - t1);
    }
  }
  if (SAMPLES % 2 === 1) await mutate(RELEASE);
  const dr = dist(raw);
  const dt = dist(total);
  const da = dist(afterResponse);
  row({
    scenario: 3,
    metric: `mutation sent on A → event received on B (${SAMPLES} sequential reserve/release)${variant.label}`,
    server: `p50 ${ms(dt.p50)} / p99 ${ms(dt.p99)}`,
    baseline: `p50 ${ms(dr.p50)} / p99 ${ms(dr.p99)}`,
    ratio: `Δp50 +${fmt(dt.p50 - dr.p50, 2)} ms`,
    goal: 'p50 within 5 ms of raw',
    status: dt.p50 - dr.p50 <= 5 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 3,
    metric: `mutation response on A → event on B (negative: event first)${variant.label}`,
    server: `p50 ${ms(da.p50)} / p99 ${ms(da.p99)}`,
    baseline: '—',
    ratio: '—',
    goal: '',
    status: '—',
  });
  if (variant === SINGLE)
    note(
      3,
      'raw baseline: ioredis PUBLISH on one connection → message on a second subscribed connection, in this process, interleaved sample by sample with the server path.',
    );
  else
    note(
      3,
      `Redis Cluster rows: the same with REDIS_URL naming a local Redis Cluster (three masters, one replica each); raw baseline SPUBLISH → SSUBSCRIBE through ioredis Cluster clients (shardedSubscribers).`,
    );
  await client.dispose();
  raw3.close();
  await agent.close();
  return { a, b, p50: dt.p50 };
}

/** Where scenarios 3 and 5 run: the single bench Redis, or a local Redis Cluster. */
interface RedisVariant {
  tag: string;
  /** Appended to row labels and titles. */
  label: string;
  title: string;
  env: Record<string, string>;
  cluster: RedisTopology | null;
}
const SINGLE: RedisVariant = { tag: '', label: '', title: '', env: {}, cluster: null };
const BENCH_CLUSTER_PORT = 7140;
let benchCluster: RedisTopology | null = null;
async function clusterVariant(): Promise<RedisVariant> {
  benchCluster ??= await startRedisCluster(BENCH_CLUSTER_PORT);
  return {
    tag: 'c',
    label: ' — Redis Cluster, 3 masters',
    title: ' (Redis Cluster, 3 masters)',
    env: { REDIS_URL: benchCluster.url },
    cluster: benchCluster,
  };
}

/** A raw publisher and subscriber of one channel: PUBLISH/SUBSCRIBE, or SPUBLISH/SSUBSCRIBE on the cluster. */
async function rawPubSub(variant: RedisVariant, channel: string) {
  if (!variant.cluster) {
    const pub = new Redis(REDIS_URL);
    const sub = new Redis(REDIS_URL);
    await sub.subscribe(channel);
    return {
      publish: (m: string) => pub.publish(channel, m),
      onMessage: (fn: () => void) => sub.on('message', fn),
      close: () => [pub, sub].forEach((r) => r.disconnect()),
    };
  }
  const seeds = variant.cluster.nodes.slice(0, 3).map((n) => ({ host: '127.0.0.1', port: n.port }));
  const pub = new Cluster(seeds, { shardedSubscribers: true });
  const sub = new Cluster(seeds, { shardedSubscribers: true });
  await sub.ssubscribe(channel);
  return {
    publish: (m: string) => pub.spublish(channel, m),
    onMessage: (fn: () => void) => sub.on('smessage', fn),
    close: () => [pub, sub].forEach((r) => r.disconnect()),
  };
}

/**
 * Scenario 5 next to a Redis Cluster: reservations/s from two instances at 100 guests, on one
 * VMID space (one shard) and spread over three (three Proxmox clusters: spaces on several
 * shards), on the single bench Redis and on the cluster in the same run.
 */
async function scenario5Cluster(single: { a: ServerChild; b: ServerChild }) {
  const variant = await clusterVariant();
  console.log(`\n== 5. Reservation throughput, single Redis next to a Redis Cluster of three masters`);
  const [ca, cb] = await Promise.all([startServer('s5ca', variant.env), startServer('s5cb', variant.env)]);
  const clustered = { a: ca, b: cb };
  const { token } = await createUser();
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${token}` };
  const per = Math.max(1, Math.floor(CONNECTIONS / 2));
  // Proxmox clusters of their own for each Redis (both deployments share the database, whose
  // record of reservations a space's two Redis would otherwise contend for), answered from a
  // process of their own as in the rest of scenario 5.
  const simChild = simProcess();
  const startSims = (n: number) => simChild.start(Array.from({ length: n }, () => 100));
  const register = async (pair: { a: ServerChild }, sim: RemoteSim) => {
    const n = await createNode(pair.a, token, sim);
    await gqlOk(pair.a.graphqlUrl, token, VMIDS_TAKEN, { n });
    return n;
  };
  const rate = async (pair: { a: ServerChild; b: ServerChild }, nodes: string[], duration = SECONDS) => {
    let granted = 0;
    const onResponse = (_status: number, body: string) => {
      if (body.includes('"reserveVmid":{')) granted++;
    };
    const start = now();
    await Promise.all(
      nodes.flatMap((n) =>
        [pair.a, pair.b].map((s) =>
          cannon({
            url: s.graphqlUrl,
            connections: Math.max(1, Math.round(per / nodes.length)),
            duration,
            requests: [
              {
                method: 'POST',
                path: '/graphql',
                headers,
                body: JSON.stringify({
                  query: 'mutation($n:ID!){reserveVmid(nodeId:$n,ttlSeconds:600){vmid}}',
                  variables: { n },
                }),
                onResponse,
              },
            ],
          }),
        ),
      ),
    );
    return granted / ((now() - start) / 1000);
  };
  try {
    const singleNodes: string[] = [];
    for (const sim of await startSims(3)) singleNodes.push(await register(single, sim));
    // On the cluster, three spaces whose keys hash to three different masters: a space's
    // keys share one hash tag (its id), so the spread is the point to make sure of.
    const slots = await slotMasters(variant.cluster!.nodes[0]!.port);
    const clusterNodes: string[] = [];
    const masters = new Set<number>();
    for (let tries = 0; clusterNodes.length < 3 && tries < 40; tries++) {
      const n = await register(clustered, (await startSims(1))[0]!);
      const { node } = await gqlOk<{ node: { clusterId: string } }>(
        ca.graphqlUrl,
        token,
        'query($n:ID!){node(id:$n){clusterId}}',
        { n },
      );
      const master = await slots.masterOf(node.clusterId);
      if (masters.has(master)) continue;
      masters.add(master);
      clusterNodes.push(n);
    }
    slots.close();
    // The cluster's instances are new: their reservation path is warmed up first, as the
    // single Redis pair's was (its own scenario ran before), on a space of its own.
    await rate(clustered, [await register(clustered, (await startSims(1))[0]!)], 2);
    const s1 = await rate(single, singleNodes.slice(0, 1));
    const c1 = await rate(clustered, clusterNodes.slice(0, 1));
    const s3 = await rate(single, singleNodes);
    const c3 = await rate(clustered, clusterNodes);
    row({
      scenario: 5,
      metric: `reservations/s at 100 guests, one VMID space (one shard), 2 instances × ${per} connections — Redis Cluster, 3 masters`,
      server: `${fmt(c1, 0)} /s`,
      baseline: `${fmt(s1, 0)} /s on single Redis`,
      ratio: ratio(c1, s1),
      goal: '≥ 0.8× single Redis',
      status: c1 >= 0.8 * s1 ? 'PASS' : 'MISS',
    });
    row({
      scenario: 5,
      metric: `reservations/s at 100 guests, three VMID spaces on ${masters.size} different masters, same load — Redis Cluster, 3 masters`,
      server: `${fmt(c3, 0)} /s (${ratio(c3, c1)} of one space)`,
      baseline: `${fmt(s3, 0)} /s on single Redis (${ratio(s3, s1)} of one space)`,
      ratio: ratio(c3, s3),
      goal: 'grows with shards',
      status: c3 > c1 ? 'PASS' : 'MISS',
    });
    note(
      5,
      'Redis Cluster rows: a local cluster (three masters, one replica each, loopback, same machine) against the single bench Redis in the same run; every instance and Redis share the same cores, so shards add Redis processes rather than machines. The cluster pair warms up on a space of its own first.',
    );
  } finally {
    simChild.close();
    await Promise.all([stopServer(ca), stopServer(cb)]);
  }
}

/**
 * Which master (its port) serves the keys whose hash tag is `tag` (CLUSTER SLOTS, KEYSLOT),
 * asked of the cluster node on `port`; `close` when done.
 */
async function slotMasters(port: number) {
  const r = new Redis({ port, host: '127.0.0.1' });
  const ranges = await r.cluster('SLOTS');
  return {
    masterOf: async (tag: string) => {
      const slot = Number(await r.cluster('KEYSLOT', tag));
      const range = ranges.find(([from, to]) => slot >= from && slot <= to);
      if (!range?.[2]) throw new Error(`no master serves slot ${slot}`);
      return range[2][1];
    },
    close: () => r.disconnect(),
  };
}

// ------------------------------------------------------------------ scenario 4
async function scenario4(server: ServerChild) {
  console.log('\n== 4. refreshVmidCache with 10,000 guests');
  const sim = await startSim(10_000);
  const { token } = await createUser();
  const nodeId = await createNode(server, token, sim);
  const agent = new Agent({ connect: { rejectUnauthorized: false } });
  const simGet = async () => {
    const t0 = now();
    const res = await request(`${sim.apiUrl}/cluster/resources?type=vm`, {
      dispatcher: agent,
      headers: { authorization: `PVEAPIToken=${sim.token.id}=${sim.token.secret}` },
    });
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new Error(`simulator answered ${res.statusCode}`);
    return { ms: now() - t0, bytes: text.length };
  };
  const REFRESH_FULL = 'mutation($n:ID!){refreshVmidCache(nodeId:$n){version taken}}';
  const REFRESH_SLIM = 'mutation($n:ID!){refreshVmidCache(nodeId:$n){version fromCache}}';
  const refresh = async (q: string) => {
    const t0 = now();
    const d = await gqlOk<{ refreshVmidCache: { taken?: number[] } }>(server.graphqlUrl, token, q, { n: nodeId });
    return { ms: now() - t0, n: d.refreshVmidCache.taken?.length };
  };
  for (let i = 0; i < 3; i++) {
    await simGet();
    await refresh(REFRESH_FULL);
  }
  const simMs: number[] = [];
  const full: number[] = [];
  const slim: number[] = [];
  let bytes = 0;
  let count = 0;
  for (let i = 0; i < 20; i++) {
    // This process serves the simulator's 2.7 MB answers and times both paths: start every
    // pair with its heap collected, so garbage left by earlier scenarios (or samples) is not
    // collected inside one measurement and not the other.
    collectGarbage();
    const s = await simGet();
    collectGarbage();
    simMs.push(s.ms);
    bytes = s.bytes;
    const f = await refresh(REFRESH_FULL);
    full.push(f.ms);
    count = f.n ?? 0;
    collectGarbage();
    slim.push((await refresh(REFRESH_SLIM)).ms);
  }
  const sm = median(simMs);
  const fm = median(full);
  const lm = median(slim);
  row({
    scenario: 4,
    metric: 'refreshVmidCache {version taken}, median of 20, minus simulator',
    server: `${ms(fm)} − ${ms(sm)} = ${ms(fm - sm)}`,
    baseline: `simulator GET ${ms(sm)}`,
    ratio: ratio(fm, sm),
    goal: 'overhead < 50 ms',
    status: fm - sm < 50 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 4,
    metric: 'refreshVmidCache {version fromCache} (no list in the answer)',
    server: `${ms(lm)} − ${ms(sm)} = ${ms(lm - sm)}`,
    baseline: `simulator GET ${ms(sm)}`,
    ratio: ratio(lm, sm),
    goal: '',
    status: '—',
  });
  note(
    4,
    `simulator answer: ${(bytes / 1024).toFixed(0)} KB for ${sim.guests().length} guests; refresh returned ${count} VMIDs. The simulator runs in the orchestrator process (same event loop as the timing client) for both measurements.`,
  );
  await agent.close();
}

// ------------------------------------------------------------------ scenario 5
/** The guests of scenario 5's large node, and the reservations held on it before the load. */
const S5_LARGE_GUESTS = 10_000;
const S5_LARGE_RESERVED = 10_000;
/** Commands at least this slow are logged by Redis while scenario 5's load runs (SLOWLOG). */
const S5_SLOWLOG_US = 50;

/** One reservation load: both instances, `per` connections each, SECONDS. */
interface ReserveLoad {
  rps: number;
  p99: number;
  vmids: number[];
  errors: Map<string, number>;
  /** CPU ms each group of processes spent during the load. */
  cpu: Record<string, number>;
  /** Commands of this run's keys that took ≥ S5_SLOWLOG_US, slowest first. */
  slow: Array<{ us: number; command: string }>;
  /** Time the hypervisor ran something else on the machine's cores (steal, every core together), ms, and the load's length, s. */
  stealMs: number;
  seconds: number;
}

async function scenario5(_sim: Simulator, pair: { a: ServerChild; b: ServerChild }) {
  console.log(
    `\n== 5. Reservation throughput from two instances: 100 guests, and ${S5_LARGE_GUESTS} guests + ${S5_LARGE_RESERVED} live reservations`,
  );
  const { a, b } = pair;
  const { token } = await createUser();
  // The simulators answering the confirmations run in a process of their own, as Proxmox runs
  // on hosts of its own: their answers do not wait behind the load's event loop.
  const simChild = simProcess();
  const [smallSim, largeSim, flushSim, warmSim, flushOwnSim] = (await simChild.start([
    100,
    S5_LARGE_GUESTS,
    100,
    100,
    100,
  ])) as [RemoteSim, RemoteSim, RemoteSim, RemoteSim, RemoteSim];
  const small = await createNode(a, token, smallSim);
  const large = await createNode(a, token, largeSim);
  const flushed = await createNode(a, token, flushSim);
  const warm = await createNode(a, token, warmSim);
  const flushedOwn = await createNode(a, token, flushOwnSim);
  for (const n of [small, large, flushed, warm, flushedOwn]) await gqlOk(a.graphqlUrl, token, VMIDS_TAKEN, { n });
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${token}` };
  const per = Math.max(1, Math.floor(CONNECTIONS / 2));
  const redisPid = await redisProcessId();

  // Baseline: the same two-instance load with vmidsTaken cache hits (same HTTP, GraphQL,
  // auth and ownership path; only the resolver's Redis work differs).
  const readBody = JSON.stringify({ query: VMIDS_TAKEN, variables: { n: small } });
  await Promise.all(
    [a, b].map((s) =>
      cannon({ url: s.graphqlUrl, method: 'POST', headers, body: readBody, connections: per, duration: 2 }),
    ),
  );
  const readSpent = cpuSpent({
    servers: () => [a.pid, b.pid],
    'bench (load)': () => [process.pid],
    'Proxmox simulator': () => [simChild.pid],
    redis: () => [redisPid],
    postgres: () => pidsNamed('postgres'),
  });
  const reads = await Promise.all(
    [a, b].map((s) =>
      cannon({ url: s.graphqlUrl, method: 'POST', headers, body: readBody, connections: per, duration: SECONDS }),
    ),
  );
  reads.forEach((r, i) => checkCannon(`read ${i}`, r));
  const readRps = reads.reduce((x, r) => x + r.requests.average, 0);
  const readCpu = readSpent();
  const readsDone = reads.reduce((x, r) => x + r.requests.total, 0);

  // The large node's live reservations: every other VMID above its guests, so what the load
  // reserves are gaps deep inside the used range (the lowest free VMID is never at an end).
  const top = Math.max(...largeSim.vmids);
  const held = Array.from({ length: S5_LARGE_RESERVED }, (_, i) => top + 2 + 2 * i);
  const agent = new Agent({ connections: 32 });
  const t0 = now();
  await pool(held, 32, async (vmid) => {
    const r = await gqlVia(
      agent,
      a.graphqlUrl,
      token,
      'mutation($n:ID!,$v:Int!){reserveVmid(nodeId:$n,vmid:$v,ttlSeconds:3600){vmid}}',
      { n: large, v: vmid },
    );
    if (r.errors?.length) throw new Error(`seeding reservation ${vmid}: ${JSON.stringify(r.errors)}`);
  });
  await agent.close();
  console.log(`  seeded ${held.length} reservations in ${fmt((now() - t0) / 1000, 1)} s`);

  // Loads with Redis on a core of its own (redisOnOwnCore): why they could not have it here, if so.
  let ownCoreMissing: string | undefined;
  const ownCore = () => {
    const restore = redisOnOwnCore(redisPid, [process.pid, a.pid, b.pid, simChild.pid]);
    if (typeof restore === 'string') ownCoreMissing = restore;
    return typeof restore === 'string' ? () => undefined : restore;
  };
  const run = async (
    nodeId: string,
    label: string,
    opts: { midway?: () => Promise<void>; ownCore?: boolean } = {},
  ): Promise<ReserveLoad> => {
    const { midway } = opts;
    const vmids: number[] = [];
    const errors = new Map<string, number>();
    const reserveBody = JSON.stringify({
      query: 'mutation($n:ID!){reserveVmid(nodeId:$n,ttlSeconds:600){vmid}}',
      variables: { n: nodeId },
    });
    const onResponse = (status: number, body: string) => {
      try {
        const j = JSON.parse(body) as {
          data?: { reserveVmid?: { vmid: number } };
          errors?: Array<{ extensions?: { code?: string } }>;
        };
        if (j.data?.reserveVmid) vmids.push(j.data.reserveVmid.vmid);
        else {
          const c = String(j.errors?.[0]?.extensions?.code ?? status);
          errors.set(c, (errors.get(c) ?? 0) + 1);
        }
      } catch {
        errors.set(`unparsable ${status}`, (errors.get(`unparsable ${status}`) ?? 0) + 1);
      }
    };
    const space = (
      await gqlOk<{ node: { clusterId: string } }>(a.graphqlUrl, token, 'query($n:ID!){node(id:$n){clusterId}}', {
        n: nodeId,
      })
    ).node.clusterId;
    const { result, slow } = await withSlowlog(space, opts.ownCore ? ownCore : undefined, async () => {
      const spent = cpuSpent({
        servers: () => [a.pid, b.pid],
        'bench (load)': () => [process.pid],
        'Proxmox simulator': () => [simChild.pid],
        redis: () => [redisPid],
        postgres: () => pidsNamed('postgres'),
      });
      const start = now();
      const steal = machineSteal();
      // BENCH_PROFILE_WINDOW=reserve-small (or -large, -flush): a CPU profile of that load alone.
      for (const s of [a, b]) profileWindow(s, `reserve-${label}`);
      const loads = [a, b].map((s) =>
        cannon({
          url: s.graphqlUrl,
          connections: per,
          duration: SECONDS,
          requests: [{ method: 'POST', path: '/graphql', headers, body: reserveBody, onResponse }],
        }),
      );
      if (midway) await new Promise((r) => setTimeout(r, (SECONDS * 1000) / 2)).then(midway);
      const res = await Promise.all(loads);
      for (const s of [a, b]) profileWindow(s, `reserve-${label}`);
      return { res, elapsed: (now() - start) / 1000, cpu: spent(), stealMs: steal() };
    });
    result.res.forEach((r, i) => checkCannon(`reserve ${label} ${i}`, r));
    return {
      cpu: result.cpu,
      rps: vmids.length / result.elapsed,
      p99: Math.max(...result.res.map((r) => r.latency.p99)),
      vmids,
      errors,
      slow,
      stealMs: result.stealMs,
      seconds: result.elapsed,
    };
  };
  // Warm-up, as the read baseline has one: the reservation path's first seconds run partly
  // unoptimised (V8 compiles it under the load), which the first measured load would pay alone.
  const warmBody = JSON.stringify({
    query: 'mutation($n:ID!){reserveVmid(nodeId:$n,ttlSeconds:600){vmid}}',
    variables: { n: warm },
  });
  await Promise.all(
    [a, b].map((s) =>
      cannon({ url: s.graphqlUrl, method: 'POST', headers, body: warmBody, connections: per, duration: 2 }),
    ),
  );
  const atSmall = await run(small, 'small');
  const atLarge = await run(large, 'large');
  // The same load on the same space, Redis on a core of its own: how long its commands take
  // when the bench's processes do not take its CPU in the middle of one.
  const atLargeOwn = await run(large, 'large-own', { ownCore: true });
  // Redis loses every key of the deployment halfway through (a restart without persistence):
  // the reservations come back from the database, none is handed out twice.
  let lostKeys = 0;
  const atFlush = await run(flushed, 'flush', {
    midway: async () => {
      lostKeys = await deletePrefix();
    },
  });
  const atFlushOwn = await run(flushedOwn, 'flush-own', {
    midway: () => deletePrefix().then(() => undefined),
    ownCore: true,
  });

  /** Duplicates, answers not held (read back through the API), overlaps with guests. */
  const check = async (nodeId: string, sim: RemoteSim, load: ReserveLoad) => {
    const state = await gqlOk<{ vmidsTaken: { reserved: number[] } }>(a.graphqlUrl, token, VMIDS_TAKEN, { n: nodeId });
    const reserved = new Set(state.vmidsTaken.reserved);
    const guests = new Set(sim.vmids);
    const unique = new Set(load.vmids);
    return {
      dups: load.vmids.length - unique.size,
      notHeld: [...unique].filter((v) => !reserved.has(v)).length,
      overlap: load.vmids.filter((v) => guests.has(v)).length,
      reserved: reserved.size,
      range: load.vmids.length ? `${Math.min(...load.vmids)}…${Math.max(...load.vmids)}` : 'none',
    };
  };
  // Keys and SLOWLOG entries are the VMID space's (the cluster's), not the registration's.
  const cs = await check(small, smallSim, atSmall);
  const cl = await check(large, largeSim, atLarge);
  const cf = await check(flushed, flushSim, atFlush);
  const clo = await check(large, largeSim, atLargeOwn);
  const cfo = await check(flushedOwn, flushOwnSim, atFlushOwn);
  simChild.close();
  const slowest = (l: ReserveLoad) =>
    l.slow[0] ? `${ms(l.slow[0].us / 1000)} (${l.slow[0].command})` : `< ${S5_SLOWLOG_US} µs (none logged)`;
  const slowestUs = (l: ReserveLoad) => l.slow[0]?.us ?? 0;
  /**
   * The RESERVE scripts logged (nearly all of them: few take less than S5_SLOWLOG_US), and
   * the slowest command that takes constant time whatever the sizes: only the machine (Redis
   * descheduled on a busy 2-core host) makes one of those slow, so it tells a stall apart
   * from work that grows with the node.
   */
  const profile = (l: ReserveLoad) => {
    const d = dist(l.slow.filter((e) => e.command === 'EVALSHA RESERVE').map((e) => e.us));
    const over = l.slow.filter((e) => e.command === 'EVALSHA RESERVE' && e.us >= 1000).length;
    const control = l.slow.find((e) => CONSTANT_TIME.has(e.command));
    const overByCommand = new Map<string, number>();
    for (const e of l.slow) if (e.us >= 1000) overByCommand.set(e.command, (overByCommand.get(e.command) ?? 0) + 1);
    const overAll = [...overByCommand].map(([c, n]) => `${n} ${c}`).join(', ') || 'none';
    return `RESERVE scripts logged ≥ ${S5_SLOWLOG_US} µs: ${d.n}, p50 ${fmt(d.p50, 0)} µs, p99 ${fmt(d.p99, 0)} µs, max ${fmt(d.max, 0)} µs, ${over} ≥ 1 ms; slowest constant-time command ${control ? `${fmt(control.us, 0)} µs (${control.command})` : `< ${S5_SLOWLOG_US} µs`}; every command ≥ 1 ms: ${overAll}`;
  };

  row({
    scenario: 5,
    metric: `reservations/s at 100 guests, 2 instances × ${per} connections, ${SECONDS} s (each confirmed with Proxmox: /cluster/nextid?vmid=N)`,
    server: `${fmt(atSmall.rps, 0)} /s (p99 ${ms(atSmall.p99)})`,
    baseline: `${fmt(readRps, 0)} vmidsTaken/s (cache hits)`,
    ratio: ratio(atSmall.rps, readRps),
    goal: '≥ 0.2× the cache-hit read rate',
    status: atSmall.rps >= 0.2 * readRps ? 'PASS' : 'MISS',
  });
  row({
    scenario: 5,
    metric: `reservations/s at ${S5_LARGE_GUESTS} guests + ${S5_LARGE_RESERVED} live reservations (same load)`,
    server: `${fmt(atLarge.rps, 0)} /s (p99 ${ms(atLarge.p99)})`,
    baseline: `${fmt(atSmall.rps, 0)} /s at 100 guests (p99 ${ms(atSmall.p99)})`,
    ratio: ratio(atLarge.rps, atSmall.rps),
    goal: '≥ 0.8× the rate at 100 guests',
    status: atLarge.rps >= 0.8 * atSmall.rps ? 'PASS' : 'MISS',
  });
  const ownCoreSays = ownCoreMissing
    ? `Redis could not have a core of its own here (${ownCoreMissing}): it shared them`
    : 'Redis on a core of its own under SCHED_FIFO, the bench off it';
  row({
    scenario: 5,
    metric: `slowest Redis command of the space's keys during the load on the ${S5_LARGE_GUESTS}-guest space again (${ownCoreSays}; SLOWLOG, commands inside scripts count too)`,
    server: slowest(atLargeOwn),
    baseline: `${slowest(atLarge)} sharing the cores`,
    ratio: atLarge.slow[0] && atLargeOwn.slow[0] ? ratio(slowestUs(atLargeOwn), slowestUs(atLarge)) : '—',
    goal: '< 1 ms',
    status: slowestUs(atLargeOwn) < 1000 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 5,
    metric: `slowest Redis command of the space's keys during a load at 100 guests that loses every Redis key halfway (${ownCoreSays})`,
    server: slowest(atFlushOwn),
    baseline: `${slowest(atFlush)} sharing the cores`,
    ratio: atFlush.slow[0] && atFlushOwn.slow[0] ? ratio(slowestUs(atFlushOwn), slowestUs(atFlush)) : '—',
    goal: '< 1 ms',
    status: slowestUs(atFlushOwn) < 1000 ? 'PASS' : 'MISS',
  });
  const dups = cs.dups + cl.dups + clo.dups;
  const bad = dups + cs.notHeld + cl.notHeld + clo.notHeld + cs.overlap + cl.overlap + clo.overlap;
  row({
    scenario: 5,
    metric: `duplicate VMIDs among ${atSmall.vmids.length} + ${atLarge.vmids.length} + ${atLargeOwn.vmids.length} reservations`,
    server: String(dups),
    baseline: '0',
    ratio: '—',
    goal: '0 duplicates',
    status: bad === 0 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 5,
    metric: `duplicate VMIDs among ${atFlush.vmids.length} + ${atFlushOwn.vmids.length} reservations at 100 guests, every Redis key of the deployment (${lostKeys}) deleted halfway`,
    server: String(cf.dups + cfo.dups),
    baseline: `${fmt(atFlush.rps, 0)} /s (p99 ${ms(atFlush.p99)})`,
    ratio: '—',
    goal: '0 duplicates, all held',
    status: cf.dups + cf.notHeld + cf.overlap + cfo.dups + cfo.notHeld + cfo.overlap === 0 ? 'PASS' : 'MISS',
  });
  const perReservation = (l: ReserveLoad) =>
    Object.entries(l.cpu)
      .map(([k, cpuMs]) => `${k} ${fmt((cpuMs * 1000) / Math.max(1, l.vmids.length), 0)} µs`)
      .join(', ');
  note(
    5,
    `cache-hit reads (the baseline): CPU per read: ${Object.entries(readCpu)
      .map(([k, cpuMs]) => `${k} ${fmt((cpuMs * 1000) / Math.max(1, readsDone), 0)} µs`)
      .join(', ')}.`,
  );
  for (const [label, l, c] of [
    ['100 guests', atSmall, cs],
    [`${S5_LARGE_GUESTS} guests`, atLarge, cl],
    [`${S5_LARGE_GUESTS} guests again, Redis on a core of its own`, atLargeOwn, clo],
    ['100 guests, Redis keys lost halfway', atFlush, cf],
    ['100 guests, Redis keys lost halfway, Redis on a core of its own', atFlushOwn, cfo],
  ] as const) {
    note(5, `${label}: ${profile(l)}; steal ${fmt(l.stealMs, 0)} ms over ${fmt(l.seconds, 1)} s.`);
    note(5, `${label}: CPU per reservation: ${perReservation(l)}.`);
    note(
      5,
      `${label}: errors ${l.errors.size ? JSON.stringify(Object.fromEntries(l.errors)) : 'none'}; VMIDs ${c.range}, all ${c.notHeld === 0 ? '' : 'but ' + c.notHeld + ' '}held afterwards (${c.reserved} reserved: the extra ones were answered after autocannon stopped counting), ${c.overlap} overlap with guests; ${l.slow.length} commands of its keys took ≥ ${S5_SLOWLOG_US} µs${
        l.slow.length
          ? ` (${l.slow
              .slice(0, 3)
              .map((e) => `${fmt(e.us, 0)} µs ${e.command}`)
              .join(', ')})`
          : ''
      }.`,
    );
  }
  note(
    5,
    `the large node holds ${S5_LARGE_RESERVED} reservations of every other VMID above its guests before the load (seeded through the API), so each reservation of the load is a gap deep inside ${S5_LARGE_GUESTS + S5_LARGE_RESERVED} used VMIDs. SLOWLOG: slowlog-log-slower-than set to ${S5_SLOWLOG_US} µs (and a long slowlog-max-len) during each load, restored afterwards; entries counted are those naming the node's keys. The loads "on a core of its own" pin Redis's main thread to the last core under SCHED_FIFO and keep the bench's processes (servers, simulator, load) off it, as a Redis on a host of its own; the rates come from the loads before, where every process shares the cores.`,
  );
  note(
    5,
    'baseline of the first row: the same two-instance autocannon load reading vmidsTaken (cache hit) — identical HTTP/GraphQL/auth/ownership path, so the ratio isolates the reservation itself (Redis script, database row, Proxmox confirmation, event publish). The read baseline and the first reservation load each follow 2 s of the same load unmeasured (for the reservations, on a VMID space of their own).',
  );
}

/** The bench Redis server's process id (INFO server). */
async function redisProcessId(): Promise<number> {
  const admin = new Redis(REDIS_URL);
  try {
    return Number(/process_id:(\d+)/.exec(await admin.info('server'))?.[1]);
  } finally {
    admin.disconnect();
  }
}

/** Deletes every Redis key of this run's deployment (what a restart without persistence leaves); answers how many. */
async function deletePrefix(): Promise<number> {
  const admin = new Redis(REDIS_URL);
  try {
    return await deleteKeysWithPrefix(admin, prefix);
  } finally {
    admin.disconnect();
  }
}

/** Commands whose cost does not grow with a node's sets (scripts call them; SLOWLOG logs those too). */
const CONSTANT_TIME = new Set([
  'TIME',
  'HINCRBY',
  'HGET',
  'HSET',
  'HDEL',
  'SISMEMBER',
  'ZSCORE',
  'ZCARD',
  'EXISTS',
  'PEXPIREAT',
]);

/**
 * Runs `load` with Redis's SLOWLOG recording every command of at least S5_SLOWLOG_US, and
 * answers those that name the VMID space's keys, slowest first (EVALSHA named by its script).
 * `schedule` (redisOnOwnCore) changes where Redis runs for the load and answers how to undo it.
 * The previous settings are restored whatever happens.
 */
async function withSlowlog<T>(
  spaceId: string,
  schedule: (() => () => void) | undefined,
  load: () => Promise<T>,
): Promise<{ result: T; slow: Array<{ us: number; command: string }> }> {
  const admin = new Redis(REDIS_URL);
  const restoreScheduling = schedule?.() ?? (() => undefined);
  const setting = async (name: string) => ((await admin.config('GET', name)) as string[])[1] ?? '';
  const threshold = await setting('slowlog-log-slower-than');
  const maxLen = await setting('slowlog-max-len');
  const scriptNames = new Map(
    Object.entries(vmidScripts).map(([name, lua]) => [createHash('sha1').update(String(lua)).digest('hex'), name]),
  );
  try {
    await admin.config('SET', 'slowlog-max-len', '100000');
    await admin.config('SET', 'slowlog-log-slower-than', String(S5_SLOWLOG_US));
    await admin.slowlog('RESET');
    const result = await load();
    await admin.config('SET', 'slowlog-log-slower-than', threshold);
    const entries = (await admin.slowlog('GET', -1)) as Array<[number, number, number, string[]]>;
    const slow = entries
      .filter(([, , , args]) => args.some((x) => x.includes(`{${spaceId}}`)))
      .map(([, , us, args]) => {
        const [cmd = '?', sha = ''] = args;
        return {
          us,
          command:
            cmd.toUpperCase() === 'EVALSHA' ? `EVALSHA ${scriptNames.get(sha) ?? sha.slice(0, 8)}` : cmd.toUpperCase(),
        };
      })
      .sort((x, y) => y.us - x.us);
    return { result, slow };
  } finally {
    await admin.config('SET', 'slowlog-log-slower-than', threshold).catch(() => undefined);
    await admin.slowlog('RESET').catch(() => undefined);
    await admin.config('SET', 'slowlog-max-len', maxLen).catch(() => undefined);
    restoreScheduling();
    admin.disconnect();
  }
}

// ------------------------------------------------------------------ scenario 6
/** The watch interval the two instances of scenario 6 run with (VMID_WATCH_INTERVAL_S; the server's minimum is 1). */
const S6_INTERVAL_S = 1;
const S6_GUESTS = 10_000;
/** Guests created behind pvegraph's back, one at a time. */
const S6_CHANGES = 10;
/** From one creation to the next: this much, plus a random part of an interval (so creations fall at every phase of the probe timer). */
const S6_GAP_MS = 3_000;
/** Length of the quiet window (no change) over which the Proxmox requests are counted. */
const S6_QUIET_INTERVALS = 10;
const S6_QUERY = 'subscription($n:ID){vmidEvents(nodeId:$n){kind version added removed}}';
/** What the goal allows on top of the interval. */
const S6_SLACK_MS = 250;

/**
 * One graphql-transport-ws subscription spoken by hand over `ws`, to see every `next` frame as
 * it travels (the server does not compress: the length read is the frame's payload).
 */
async function rawSubscription(url: string, token: string, query: string, variables: Record<string, unknown>) {
  const frames: Array<{ t: number; bytes: number; added: number[] }> = [];
  const ws = new WebSocket(url, 'graphql-transport-ws');
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('raw subscription: no SYNC in 30 s')), 30_000);
    ws.once('error', reject);
    ws.on('open', () =>
      ws.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } })),
    );
    ws.on('message', (data: Buffer) => {
      const t = now();
      const m = JSON.parse(data.toString()) as {
        type: string;
        payload?: { data?: { vmidEvents?: { added?: number[] } } };
      };
      if (m.type === 'connection_ack')
        ws.send(JSON.stringify({ id: '1', type: 'subscribe', payload: { query, variables } }));
      else if (m.type === 'ping') ws.send(JSON.stringify({ type: 'pong' }));
      else if (m.type === 'next') {
        frames.push({ t, bytes: data.length, added: m.payload?.data?.vmidEvents?.added ?? [] });
        if (frames.length === 1) {
          clearTimeout(timer);
          resolve();
        }
      } else if (m.type === 'error' || m.type === 'complete') {
        clearTimeout(timer);
        reject(new Error(`raw subscription: ${data.toString().slice(0, 300)}`));
      }
    });
  });
  return { frames, close: () => ws.close() };
}

async function scenario6() {
  const intervalMs = S6_INTERVAL_S * 1000;
  const goalMs = intervalMs + S6_SLACK_MS;
  console.log(
    `\n== 6. Live changes from outside pvegraph: guests created in Proxmox → REFRESHED at ${SUBSCRIBERS} subscribers on two instances (VMID_WATCH_INTERVAL_S=${S6_INTERVAL_S}, ${S6_GUESTS} guests)`,
  );
  const sim = await startSim(S6_GUESTS);
  const env = { VMID_WATCH_INTERVAL_S: String(S6_INTERVAL_S) };
  const [a, b] = await Promise.all([startServer('s6a', env), startServer('s6b', env)]);
  const { token } = await createUser();
  const nodeId = await createNode(a, token, sim);
  await gqlOk(a.graphqlUrl, token, VMIDS_TAKEN, { n: nodeId });

  // Redis: every message of the deployment's VMID event channels, with its size and arrival.
  const redisSub = new Redis(REDIS_URL);
  const onRedis: Array<{ t: number; bytes: number; added: number[] }> = [];
  redisSub.on('pmessageBuffer', (_pattern: Buffer, _channel: Buffer, message: Buffer) => {
    const t = now();
    let added: number[] = [];
    try {
      added = (JSON.parse(message.toString()) as { added?: number[] }).added ?? [];
    } catch {
      /* not an event: counted with no VMID */
    }
    onRedis.push({ t, bytes: message.length, added });
  });
  await redisSub.psubscribe(`${prefix}vmid-events:*`);
  // One subscriber spoken by hand on each instance: the frames as they travel.
  const rawA = await rawSubscription(a.wsUrl, token, S6_QUERY, { n: nodeId });
  const rawB = await rawSubscription(b.wsUrl, token, S6_QUERY, { n: nodeId });

  const fleet = await startFleet();
  console.log(`  clock offset subscriber process − orchestrator: ${fmt(fleet.offset, 3)} ms (corrected)`);
  const half = Math.ceil(SUBSCRIBERS / 2);
  const oa = await fleet.open(a.wsUrl, [{ token, nodeId, count: half }], S6_QUERY);
  const ob = await fleet.open(b.wsUrl, [{ token, nodeId, count: SUBSCRIBERS - half }], S6_QUERY);
  const failed = oa.failed + ob.failed;
  console.log(
    `  subscribed: ${oa.ok} on A in ${fmt(oa.ms / 1000, 1)} s, ${ob.ok} on B in ${fmt(ob.ms / 1000, 1)} s (${failed} failed${[...oa.errors, ...ob.errors].length ? `: ${[...oa.errors, ...ob.errors].slice(0, 3).join('; ')}` : ''})`,
  );

  const counts = () => ({
    t: now(),
    probes: sim.stats.count('/cluster/tasks'),
    listings: sim.stats.count('/cluster/resources'),
  });
  const perInterval = (from: ReturnType<typeof counts>, to: ReturnType<typeof counts>) => {
    const intervals = (to.t - from.t) / intervalMs;
    return {
      intervals,
      probes: to.probes - from.probes,
      listings: to.listings - from.listings,
      probesPer: (to.probes - from.probes) / intervals,
    };
  };

  // Quiet: the lease holder's first probe lists (it has no cursor yet); then nothing changes.
  await sleep(3 * intervalMs);
  const q0 = counts();
  await sleep(S6_QUIET_INTERVALS * intervalMs);
  const quiet = perInterval(q0, counts());
  console.log(`  quiet ${fmt(quiet.intervals, 1)} intervals: ${quiet.probes} probes, ${quiet.listings} listings`);

  /** Creates one guest behind pvegraph's back; answers when it was created and every subscriber's REFRESHED holding it. */
  const change = async (i: number) => {
    const vmid = sim.nextFreeVmid();
    await fleet.arm(vmid);
    const at = now();
    sim.addGuest({ vmid, name: `bench-s6-${i}` });
    const r = await fleet.received(Math.max(30_000, 20 * intervalMs));
    const delays: number[] = [];
    let missing = 0;
    r.times.forEach((t) => {
      if (t === null || Number.isNaN(t)) missing++;
      else delays.push(t - fleet.offset - at);
    });
    return { vmid, at, delays, missing };
  };
  // One unmeasured change first, as the other fan-outs are preceded by one (compiled paths, warm connections).
  await change(-1);
  collectGarbage();
  await sleep(S6_GAP_MS);

  const cpu = cpuWindow([a.pid, b.pid, fleet.child.pid!]);
  const c0 = counts();
  const all: number[] = [];
  /** From the REFRESHED message's arrival on Redis (seen by this process) to each subscriber: the fan-out alone. */
  const fanout: number[] = [];
  let missing = 0;
  const perChange: Array<{
    vmid: number;
    d: Dist;
    missing: number;
    redisMs: number;
    redisBytes: number;
    socketBytes: number[];
  }> = [];
  for (let i = 0; i < S6_CHANGES; i++) {
    const c = await change(i);
    all.push(...c.delays);
    missing += c.missing;
    // The Redis message and the frames that carried this guest (allow a moment for the raw readers).
    await sleep(50);
    const msg = onRedis.find((m) => m.t >= c.at && m.added.includes(c.vmid));
    if (msg) fanout.push(...c.delays.map((x) => x - (msg.t - c.at)));
    const frames = [rawA, rawB].map(
      (raw) => raw.frames.find((f) => f.t >= c.at && f.added.includes(c.vmid))?.bytes ?? NaN,
    );
    perChange.push({
      vmid: c.vmid,
      d: dist(c.delays),
      missing: c.missing,
      redisMs: msg ? msg.t - c.at : NaN,
      redisBytes: msg?.bytes ?? NaN,
      socketBytes: frames,
    });
    console.log(
      `  change ${i + 1}: VMID ${c.vmid} → ${distStr(dist(c.delays))} (${c.missing} missing); Redis after ${ms(msg ? msg.t - c.at : NaN)}, ${msg?.bytes ?? 'n/a'} B; frame ${frames.join(' / ')} B`,
    );
    await sleep(Math.max(0, c.at + S6_GAP_MS + Math.random() * intervalMs - now()));
  }
  const changing = perInterval(c0, counts());
  const cpuMs = cpu();

  await fleet.close();
  fleet.child.kill('SIGTERM');
  rawA.close();
  rawB.close();
  redisSub.disconnect();

  const d = dist(all);
  const f = dist(fanout);
  const redisDelay = dist(perChange.map((c) => c.redisMs).filter(Number.isFinite));
  const redisBytes = perChange.map((c) => c.redisBytes);
  const socketBytes = perChange.flatMap((c) => c.socketBytes);
  const maxOf = (xs: number[]) => (xs.some((x) => !Number.isFinite(x)) ? NaN : Math.max(...xs));
  const n = oa.ok + ob.ok;
  const expectedListings = S6_CHANGES;
  row({
    scenario: 6,
    metric: `guest created in Proxmox (simulator, ${S6_GUESTS} guests) → REFRESHED with it in \`added\` at each of ${n} subscribers on two instances (${S6_CHANGES} creations, all deliveries)`,
    server: distStr(d),
    baseline: '—',
    ratio: `p99 ${ratio(d.p99, intervalMs, 2)} interval`,
    goal: `p99 ≤ interval + ${S6_SLACK_MS} ms (${goalMs} ms)`,
    status: d.p99 <= goalMs && missing === 0 && failed === 0 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 6,
    metric:
      'of which: REFRESHED seen on Redis → each subscriber (the fan-out over both instances, without the wait for the probe and the listing)',
    server: distStr(f),
    baseline: '—',
    ratio: '—',
    goal: '',
    status: '—',
  });
  row({
    scenario: 6,
    metric: `Proxmox requests per interval, quiet (${fmt(quiet.intervals, 1)} intervals, ${n} subscribers connected): GET /cluster/tasks, GET /cluster/resources`,
    server: `${fmt(quiet.probesPer, 2)} probes/interval (${quiet.probes}), ${quiet.listings} listings`,
    baseline: '—',
    ratio: '—',
    goal: '1 probe per interval, 0 listings',
    status: quiet.probesPer >= 0.9 && quiet.probesPer <= 1.1 && quiet.listings === 0 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 6,
    metric: `Proxmox requests per interval during the ${S6_CHANGES} creations (${fmt(changing.intervals, 1)} intervals)`,
    server: `${fmt(changing.probesPer, 2)} probes/interval (${changing.probes}), ${changing.listings} listings`,
    baseline: '—',
    ratio: `${fmt(changing.listings / S6_CHANGES, 2)} listings per creation`,
    goal: `1 probe per interval + 1 listing per creation (${expectedListings})`,
    status:
      changing.probesPer >= 0.9 && changing.probesPer <= 1.1 && changing.listings === expectedListings
        ? 'PASS'
        : 'MISS',
  });
  row({
    scenario: 6,
    metric: `bytes per event on Redis for one new guest in a ${S6_GUESTS}-guest cluster (PUBLISH payload)`,
    server: `${fmt(maxOf(redisBytes), 0)} B`,
    baseline: '—',
    ratio: '—',
    goal: '< 1 KB',
    status: maxOf(redisBytes) < 1024 ? 'PASS' : 'MISS',
  });
  row({
    scenario: 6,
    metric: `bytes per event on a socket (graphql-ws \`next\` frame payload, selection \`kind version added removed\`)`,
    server: `${fmt(maxOf(socketBytes), 0)} B`,
    baseline: '—',
    ratio: '—',
    goal: '< 1 KB',
    status: maxOf(socketBytes) < 1024 ? 'PASS' : 'MISS',
  });
  note(
    6,
    `per creation (VMID: p50/p99 over the subscribers; Redis message seen after): ${perChange.map((c) => `${c.vmid}: ${fmt(c.d.p50, 0)}/${fmt(c.d.p99, 0)} ms, ${fmt(c.redisMs, 0)} ms`).join('; ')}.`,
  );
  note(
    6,
    `creation → the REFRESHED message on Redis (the probe's wait for its interval, the task probe, the ${S6_GUESTS}-guest listing and the write): p50 ${ms(redisDelay.p50)}, max ${ms(redisDelay.max)}; the rest of the delay is the fan-out to ${n} sockets. Creations are ${S6_GAP_MS / 1000} s + a random part of an interval apart, so they fall at every phase of the probe timer: the delay's floor is the listing, its spread the interval.`,
  );
  note(
    6,
    `missing deliveries ${missing}; failed subscribes ${failed} (A ${oa.ok}/${half}, B ${ob.ok}/${SUBSCRIBERS - half}; subscribing took ${fmt(oa.ms / 1000, 1)} s + ${fmt(ob.ms / 1000, 1)} s, 100 in flight). Redis bytes per creation: ${redisBytes.join(', ')}; frame bytes per creation (A/B): ${perChange.map((c) => c.socketBytes.join('/')).join(', ')} (plus 2–4 bytes of WebSocket header).`,
  );
  note(
    6,
    `setup: two instances with VMID_WATCH_INTERVAL_S=${S6_INTERVAL_S}, one registration of a simulator with ${S6_GUESTS} guests, ${n} graphql-ws subscribers of vmidEvents(nodeId) { kind version added removed } split over both (one subscriber process, bench/subscribers.ts), one more on each instance spoken by hand for the frame sizes, and a raw ioredis PSUBSCRIBE to \`<prefix>vmid-events:*\` for the Redis sizes. Guests are created with the simulator's addGuest, which records a vzcreate task as Proxmox does; nothing goes through pvegraph. One unmeasured creation precedes the measured ones. Proxmox requests are the simulator's own counts (every instance together).`,
  );
  note(
    6,
    `CPU during the creations (10 ms ticks): instance A ${fmt(cpuMs[0]!, 0)} ms, instance B ${fmt(cpuMs[1]!, 0)} ms, subscribers ${fmt(cpuMs[2]!, 0)} ms, orchestrator (simulator included) ${fmt(cpuMs[3]!, 0)} ms, over ${fmt(changing.intervals * S6_INTERVAL_S, 1)} s.`,
  );
  await Promise.all([stopServer(a), stopServer(b)]);
}

// ------------------------------------------------------------------ BENCHMARKS.md
function writeReport() {
  const file = path.join(ROOT, 'BENCHMARKS.md');
  const date = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const command =
    `${selected.length === ALL.length ? 'npm run bench' : `npm run bench -- ${selected.join(' ')}`}` + envSuffix();
  const machine = `${os.cpus().length} cores (nproc ${os.availableParallelism()}), ${os.cpus()[0]?.model ?? 'unknown CPU'}, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, Node ${process.version}, ${os.platform()} ${os.release()}`;
  let text = existsSync(file) ? readFileSync(file, 'utf8') : '# pvegraph benchmarks\n\n';
  for (const s of selected) {
    const mine = rows.filter((r) => r.scenario === s);
    const section = [
      `<!-- bench:s${s}:start -->`,
      `_Measured ${date} on ${machine}; command: \`${command}\`._`,
      '',
      '| metric | server | baseline | ratio | goal | result |',
      '|---|---|---|---|---|---|',
      ...mine.map((r) => `| ${r.metric} | ${r.server} | ${r.baseline} | ${r.ratio} | ${r.goal || '—'} | ${r.status} |`),
      '',
      ...(notes.get(s) ?? []).map((n) => `- ${n}`),
      `<!-- bench:s${s}:end -->`,
    ].join('\n');
    const re = new RegExp(`<!-- bench:s${s}:start -->[\\s\\S]*?<!-- bench:s${s}:end -->`);
    text = re.test(text) ? text.replace(re, section) : `${text.trimEnd()}\n\n### Scenario ${s}\n\n${section}\n`;
  }
  writeFileSync(file, text);
  console.log(`\nBENCHMARKS.md updated (scenarios ${selected.join(', ')}).`);
}
function envSuffix() {
  const set = [
    'BENCH_SECONDS',
    'BENCH_ROUNDS',
    'BENCH_CONNECTIONS',
    'BENCH_SUBSCRIBERS',
    'BENCH_SAMPLES',
    'BENCH_SERVER_ROOT',
    'PVEGRAPH_FAST_PATHS',
  ].filter((k) => process.env[k]);
  return set.length ? ` (with ${set.map((k) => `${k}=${process.env[k]}`).join(' ')})` : '';
}

// ------------------------------------------------------------------ main
async function main() {
  const started = Date.now();
  console.log(
    `pvegraph bench: scenarios ${selected.join(', ')}; ${os.availableParallelism()} cores, Node ${process.version}; db ${dbName}, Redis prefix ${prefix}`,
  );
  await setup();
  const sim = await startSim(50);
  if (selected.includes(0)) await scenario0(sim, row, note);
  if (selected.includes(1)) await scenario1(sim);
  if (selected.includes(2)) await scenario2(sim);
  let pair: { a: ServerChild; b: ServerChild } | null = null;
  const withCluster = process.env.BENCH_CLUSTER !== '0';
  if (selected.includes(3)) {
    pair = await scenario3(sim);
    if (withCluster) {
      const single = rows.find((r) => r.scenario === 3)!;
      const c = await scenario3(sim, await clusterVariant());
      await Promise.all([stopServer(c.a), stopServer(c.b)]);
      const singleP50 = Number(/p50 ([\d.]+) ms/.exec(single.server)?.[1]);
      row({
        scenario: 3,
        metric: 'cross-instance delivery p50: Redis Cluster (3 masters) vs single Redis',
        server: ms(c.p50),
        baseline: ms(singleP50),
        ratio: `Δp50 ${c.p50 - singleP50 >= 0 ? '+' : ''}${fmt(c.p50 - singleP50, 2)} ms`,
        goal: 'within 1 ms of single Redis',
        status: Math.abs(c.p50 - singleP50) <= 1 ? 'PASS' : 'MISS',
      });
    }
  }
  if (selected.includes(4) || selected.includes(5)) {
    if (!pair) {
      const [a, b] = await Promise.all([startServer('s45a'), startServer('s45b')]);
      pair = { a, b };
    }
    if (selected.includes(4)) await scenario4(pair.a);
    if (selected.includes(5)) {
      await scenario5(sim, pair);
      if (withCluster) await scenario5Cluster(pair);
    }
  }
  if (selected.includes(6)) {
    // Scenario 6 starts its own two instances (with a short watch interval): the earlier ones
    // would only take memory and CPU from it.
    if (pair) await Promise.all([stopServer(pair.a), stopServer(pair.b)]);
    await scenario6();
  }
  console.log('\n== Summary');
  console.log('| # | metric | server | baseline | ratio | goal | result |');
  for (const r of rows)
    console.log(
      `| ${r.scenario} | ${r.metric} | ${r.server} | ${r.baseline} | ${r.ratio} | ${r.goal || '—'} | ${r.status} |`,
    );
  if (process.env.BENCH_NO_WRITE !== '1') writeReport();
  console.log(
    `total ${((Date.now() - started) / 1000).toFixed(0)} s${PROFILE ? `; CPU profiles in ${profDir}` : WINDOW ? `; window profiles in ${profDir}` : ''}`,
  );
}

let exitCode = 0;
const onSignal = () => {
  console.error('interrupted: cleaning up');
  void cleanup().finally(() => process.exit(130));
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);
// Hard bound: the bench must never hang a machine.
// Scenario 6 (10,000 subscribers, a quiet window, creations seconds apart) adds about 3 minutes.
const WATCHDOG_MIN = 10 + (selected.includes(6) ? 4 : 0);
const watchdog = setTimeout(() => {
  console.error(`bench exceeded ${WATCHDOG_MIN} minutes: aborting`);
  void cleanup().finally(() => process.exit(2));
}, WATCHDOG_MIN * 60_000);
watchdog.unref();

try {
  await main();
} catch (err) {
  console.error('bench failed:', err);
  exitCode = 1;
} finally {
  await cleanup();
}
process.exit(exitCode);
