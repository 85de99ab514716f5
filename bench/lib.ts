import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Dispatcher, request } from 'undici';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/**
 * Where the server under test is started from: this checkout, or BENCH_SERVER_ROOT (a scratch
 * copy with a prototyped patch, to measure before/after without touching src/).
 */
export const SERVER_ROOT = process.env.BENCH_SERVER_ROOT ? path.resolve(process.env.BENCH_SERVER_ROOT) : ROOT;

/** One clock for every process of the bench: wall-clock milliseconds with sub-ms resolution. */
export const now = (): number => performance.timeOrigin + performance.now();

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

/** Every child the bench started: killed on exit, whatever happens. */
const children = new Set<ChildProcess>();
export function track(child: ChildProcess): ChildProcess {
  children.add(child);
  child.once('exit', () => children.delete(child));
  return child;
}
export function killAll(signal: NodeJS.Signals = 'SIGKILL'): void {
  for (const c of children) if (c.exitCode === null && c.pid) c.kill(signal);
}
export async function stopChild(child: ChildProcess, timeoutMs = 5_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  await exited;
  clearTimeout(t);
}

export interface ServerChild {
  child: ChildProcess;
  port: number;
  url: string;
  graphqlUrl: string;
  wsUrl: string;
  pid: number;
  stderr: () => string;
}

export interface ServerEnv {
  databaseUrl: string;
  redisUrl: string;
  redisKeyPrefix: string;
  encryptionKey: string;
  /** Extra node flags before the script (e.g. --cpu-prof, which NODE_OPTIONS refuses). */
  nodeArgs?: string[];
  extraEnv?: Record<string, string>;
}

/**
 * The node flags of `npm start` (package.json, e.g. `--max-semi-space-size=32`; `npm run bench` builds dist/ first):
 * the bench runs the server exactly as a deployment does.
 */
export const START_NODE_ARGS: string[] = (() => {
  const pkg = JSON.parse(readFileSync(path.join(SERVER_ROOT, 'package.json'), 'utf8')) as {
    scripts: { start: string };
  };
  const match = /^node\s+(.*?)\s*dist\/main\.js$/.exec(pkg.scripts.start);
  if (!match) throw new Error(`bench: cannot read the node flags of "npm start": ${pkg.scripts.start}`);
  return match[1]!.split(/\s+/).filter(Boolean);
})();

/** The server as `npm start` runs it, on a free loopback port; resolves once /healthz answers. */
export async function spawnServer(env: ServerEnv, name = 'server'): Promise<ServerChild> {
  const port = await freePort();
  const child = track(
    // The bench's own flags last, so BENCH_NODE_ARGS can override npm start's.
    spawn(process.execPath, [...START_NODE_ARGS, ...(env.nodeArgs ?? []), 'dist/main.js'], {
      cwd: SERVER_ROOT,
      stdio: ['ignore', process.env.BENCH_SERVER_STDOUT ? 'inherit' : 'ignore', 'pipe'],
      env: {
        PATH: process.env.PATH ?? '',
        HOME: process.env.HOME ?? '/tmp',
        NODE_ENV: 'development',
        HOST: '127.0.0.1',
        PORT: String(port),
        DATABASE_URL: env.databaseUrl,
        REDIS_URL: env.redisUrl,
        REDIS_KEY_PREFIX: env.redisKeyPrefix,
        ENCRYPTION_KEY: env.encryptionKey,
        ALLOW_LOOPBACK_NODE_HOSTS: 'true',
        LOG_LEVEL: 'warn',
        RATE_LIMIT_PROXMOX_PER_MIN: '0',
        RATE_LIMIT_RESERVATIONS_PER_MIN: '0',
        WS_MAX_CONNECTIONS_PER_USER: '20000',
        MAX_SUBSCRIPTIONS_PER_USER: '20000',
        // `PVEGRAPH_FAST_PATHS=false npm run bench` measures the servers without their shortcuts.
        ...(process.env.PVEGRAPH_FAST_PATHS ? { PVEGRAPH_FAST_PATHS: process.env.PVEGRAPH_FAST_PATHS } : {}),
        ...env.extraEnv,
      },
    }),
  );
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    if (err.length > 20_000) err = err.slice(-10_000);
  });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${name} exited during start (${child.exitCode}): ${err}`);
    try {
      const res = await fetch(`${url}/healthz`);
      if (res.ok) break;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) throw new Error(`${name} did not start in 30 s: ${err}`);
    await sleep(100);
  }
  return {
    child,
    port,
    url,
    graphqlUrl: `${url}/graphql`,
    wsUrl: `ws://127.0.0.1:${port}/graphql`,
    pid: child.pid!,
    stderr: () => err,
  };
}

/** A TypeScript child with IPC (subscriber fleets, baselines). */
export function forkTs(
  file: string,
  args: string[] = [],
  env: Record<string, string> = {},
  execArgv: string[] = [],
): ChildProcess {
  return track(
    fork(path.join(ROOT, file), args, {
      cwd: ROOT,
      execArgv: ['--import', 'tsx', ...execArgv],
      env: { ...process.env, ...env },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    }),
  );
}

/** Waits for the first IPC message that satisfies `match`. */
export function nextMessage<T>(child: ChildProcess, match: (m: any) => boolean, timeoutMs = 120_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMsg = (m: unknown) => {
      if (!match(m)) return;
      cleanup();
      resolve(m as T);
    };
    const onExit = (code: number | null) => {
      cleanup();
      reject(new Error(`child exited (${code}) while waiting for a message`));
    };
    const t = setTimeout(() => {
      cleanup();
      reject(new Error('timed out waiting for a child message'));
    }, timeoutMs);
    const cleanup = () => {
      clearTimeout(t);
      child.off('message', onMsg);
      child.off('exit', onExit);
    };
    child.on('message', onMsg);
    child.on('exit', onExit);
  });
}

export function rssKb(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(status);
  return m ? Number(m[1]) : NaN;
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const idx = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[idx]!;
}

export interface Dist {
  n: number;
  p50: number;
  p99: number;
  max: number;
  min: number;
}
export function dist(values: number[]): Dist {
  const s = [...values].sort((a, b) => a - b);
  return { n: s.length, p50: percentile(s, 50), p99: percentile(s, 99), max: s[s.length - 1] ?? NaN, min: s[0] ?? NaN };
}
export const median = (values: number[]) => dist(values).p50;

export interface GqlResult<T = any> {
  status: number;
  data?: T;
  errors?: Array<{ message: string; extensions?: Record<string, unknown> }>;
}

export async function gql<T = any>(
  url: string,
  token: string,
  query: string,
  variables: Record<string, unknown> = {},
): Promise<GqlResult<T>> {
  const res = await fetch(url, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
      authorization: `Bearer ${token}`,
    },
    body: JSON.stringify({ query, variables }),
  });
  return { status: res.status, ...((await res.json()) as object) };
}

/**
 * `gql` through undici's `request` on a given keep-alive dispatcher. For load that runs while
 * a measurement is taken: `fetch` costs ~0.7–1.3 ms of CPU per request here (WHATWG streams,
 * Request/Response objects), `request` ~0.25 ms, and on two cores that CPU is taken from the
 * server being measured and from the receiving clients.
 */
export async function gqlVia<T = any>(
  dispatcher: Dispatcher,
  url: string,
  token: string,
  query: string,
  variables: Record<string, unknown> = {},
): Promise<GqlResult<T>> {
  const res = await request(url, {
    method: 'POST',
    dispatcher,
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
      authorization: `Bearer ${token}`,
    },
    body: JSON.stringify({ query, variables }),
  });
  return { status: res.statusCode, ...((await res.body.json()) as object) };
}

/** Like gql but throws on any error. */
export async function gqlOk<T = any>(
  url: string,
  token: string,
  query: string,
  variables: Record<string, unknown> = {},
): Promise<T> {
  const r = await gql<T>(url, token, query, variables);
  if (r.errors?.length || !r.data) throw new Error(`GraphQL error (${r.status}): ${JSON.stringify(r.errors)}`);
  return r.data;
}

export const fmt = (n: number, digits = 1) => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');

export const runTag = () => `${Date.now().toString(36)}_${randomBytes(2).toString('hex')}`;

/** Runs `fn` over `items` with at most `limit` in flight. */
export async function pool<T, R>(items: T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= items.length) return;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/**
 * Open-loop load at a fixed rate: request i is due at start + i/rate and its latency counts
 * from that due time (no coordinated omission). autocannon's overallRate is a per-second
 * budget per connection — each connection fires back-to-back until its budget is used, then
 * waits for the next second — so its "fixed rate" runs are bursts at full speed.
 */
export interface PacedLoadOptions {
  url: string;
  headers: Record<string, string>;
  body: string;
  rate: number;
  seconds: number;
  connections: number;
}
export interface PacedLoadResult {
  latencies: number[];
  /** How late the generator itself sent each request (ms after its due time): its own stalls. */
  sendLags: number[];
  /**
   * The generator's event loop during the measured run: ms its 1 ms timer fired late (Node
   * records the whole gap between ticks; the period is taken off). A response that arrives
   * while it is blocked is counted late by up to that much.
   */
  loopDelay: { p99: number; max: number };
  /** When the requests answered in more than SLOW_MS were due (ms from the run's start): how the tail clusters. */
  slowDueAt: number[];
  /**
   * Of those, how many spent over half their time before undici handed them to a socket:
   * queued in the generator (its connections all busy waiting for earlier answers, or its send
   * late). Where the wait happened, not why: a longer round trip is what fills the connections.
   */
  slowWaitedForConnection: number;
  errors: number;
  sent: number;
  achievedRate: number;
}

/**
 * Open-loop, evenly paced load: request k is due at start + k/rate and its latency counts
 * from that due time (no coordinated omission). Runs in its own child process
 * (bench/paced-load.ts), so the orchestrator's heap and timers (the simulator, autocannon's
 * leftovers) do not add their pauses to the measured tails.
 */
export async function pacedLoad(opts: PacedLoadOptions): Promise<PacedLoadResult> {
  const child = forkTs('bench/paced-load.ts');
  child.send({ type: 'run', opts });
  const { result } = await nextMessage<{ result: PacedLoadResult }>(
    child,
    (m) => m?.type === 'done',
    opts.seconds * 1000 + 60_000,
  );
  await stopChild(child);
  return result;
}

/**
 * The generator itself (called in the child). A first second at the same rate is not
 * counted: a fresh process compiles its code and opens its connections then, and those
 * stalls would otherwise be the p99 of whatever is measured.
 *
 * Requests go through undici's `dispatch` with a callback handler, not `request`: no body
 * stream and no promise per request. On this 2-core VM the generator shares the CPU with the
 * server, so its own cost is part of every measured tail: at 5,000 req/s `request` took
 * ~40 % of a core, `dispatch` ~25 % (finding 20).
 */
export async function runPacedLoad(opts: PacedLoadOptions): Promise<PacedLoadResult> {
  const { Pool } = await import('undici');
  const u = new URL(opts.url);
  const pool = new Pool(u.origin, { connections: opts.connections, pipelining: 1 });
  const request = {
    origin: u.origin,
    path: u.pathname,
    method: 'POST' as const,
    headers: opts.headers,
    body: opts.body,
  };
  const send: Send = (done) => {
    let status = 0;
    let writtenAt = 0;
    pool.dispatch(request, {
      // Called just before undici hands the request to a socket (and needed for its controller API).
      onRequestStart: () => {
        writtenAt = now();
      },
      onResponseStart: (_controller, statusCode) => {
        status = statusCode;
      },
      onResponseData: () => undefined,
      onResponseEnd: () => done(status === 200, writtenAt),
      onResponseError: () => done(false, writtenAt),
    });
  };
  await paced(send, opts.rate, Math.min(1, opts.seconds));
  const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
  loop.enable();
  const result = await paced(send, opts.rate, opts.seconds);
  loop.disable();
  await pool.close();
  const lateMs = (ns: number) => Math.max(0, ns / 1e6 - LOOP_RESOLUTION_MS);
  return { ...result, loopDelay: { p99: lateMs(loop.percentile(99)), max: lateMs(loop.max) } };
}

const LOOP_RESOLUTION_MS = 1;

/** The latency goal of scenario 1 (p99 under it at half of peak). */
export const SLOW_MS = 10;

/**
 * Sends one request; `done(ok, writtenAt)` once it has been answered in full (ok: status 200)
 * or has failed, with the time it was written to a connection.
 */
type Send = (done: (ok: boolean, writtenAt: number) => void) => void;

async function paced(send: Send, rate: number, seconds: number): Promise<Omit<PacedLoadResult, 'loopDelay'>> {
  const latencies: number[] = [];
  const sendLags: number[] = [];
  const slowDueAt: number[] = [];
  let slowWaitedForConnection = 0;
  let errors = 0;
  let sent = 0;
  let settled = 0;
  const total = Math.floor(rate * seconds);
  const interval = 1000 / rate;
  const start = now() + 20;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const due = Math.min(total, Math.floor((now() - start) / interval) + 1);
      while (sent < due) {
        const scheduled = start + sent * interval;
        sendLags.push(now() - scheduled);
        sent++;
        send((ok, writtenAt) => {
          if (!ok) errors++;
          else {
            const latency = now() - scheduled;
            latencies.push(latency);
            if (latency > SLOW_MS) {
              slowDueAt.push(scheduled - start);
              if (writtenAt - scheduled > latency / 2) slowWaitedForConnection++;
            }
          }
          if (++settled === total) resolve();
        });
      }
      if (sent >= total) clearInterval(timer);
    };
    const timer = setInterval(tick, 1);
  });
  return {
    latencies,
    sendLags,
    slowDueAt,
    slowWaitedForConnection,
    errors,
    sent,
    achievedRate: latencies.length / ((now() - start) / 1000),
  };
}

/**
 * A server's own account of a window, from its /metrics (prom-client's default metrics):
 * call once before the window, and the returned function after it. prom-client restarts its
 * event-loop delay histogram at every scrape, so the worst delay is the window's own.
 */
export async function serverVitals(server: ServerChild): Promise<() => Promise<ServerVitals>> {
  const before = await scrapeMetrics(server);
  return async () => {
    const after = await scrapeMetrics(server);
    const delta = (name: string, labels: Record<string, string> = {}) =>
      sumSeries(after, name, labels) - sumSeries(before, name, labels);
    const queries = { type: 'query', outcome: 'ok' };
    return {
      gcMs: delta('pvegraph_nodejs_gc_duration_seconds_sum') * 1000,
      gcPauses: delta('pvegraph_nodejs_gc_duration_seconds_count'),
      majorGcs: delta('pvegraph_nodejs_gc_duration_seconds_count', { kind: 'major' }),
      // prom-client samples the loop with a 10 ms timer (its default precision) and records the
      // whole gap between ticks, so an idle loop reads 10 ms: what exceeds it was blocked.
      longestBlockMs: Math.max(
        0,
        sumSeries(after, 'pvegraph_nodejs_eventloop_lag_max_seconds') * 1000 - LOOP_SAMPLE_MS,
      ),
      queries: delta('pvegraph_graphql_operation_duration_seconds_count', queries),
      queriesOver10ms:
        delta('pvegraph_graphql_operation_duration_seconds_count', queries) -
        delta('pvegraph_graphql_operation_duration_seconds_bucket', { ...queries, le: '0.01' }),
    };
  };
}

/** prom-client's eventLoopMonitoringPrecision, which the server leaves at its default. */
const LOOP_SAMPLE_MS = 10;

export interface ServerVitals {
  /**
   * Lower bounds: prom-client's observer keeps the first collection of each batch Node
   * reports, and Node batches the collections of one loop turn.
   */
  gcMs: number;
  gcPauses: number;
  majorGcs: number;
  /** The longest the event loop was blocked (its longest gap between ticks, less the tick). */
  longestBlockMs: number;
  /** Successful queries, and those the server's own histogram put over 10 ms (from execution start). */
  queries: number;
  queriesOver10ms: number;
}

/** The sum of every series of `name` whose labels include `labels`. */
function sumSeries(series: Map<string, number>, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const [key, value] of series) {
    const brace = key.indexOf('{');
    if ((brace < 0 ? key : key.slice(0, brace)) !== name) continue;
    if (Object.entries(labels).every(([k, v]) => key.includes(`${k}="${v}"`))) sum += value;
  }
  return sum;
}

/** Prometheus text exposition → series (name with its labels, as printed) → value. */
async function scrapeMetrics(server: ServerChild): Promise<Map<string, number>> {
  const res = await request(`${server.url}/metrics`);
  const text = await res.body.text();
  // A refused scrape (METRICS_TOKEN set) must not read as "nothing happened".
  if (res.statusCode !== 200) throw new Error(`GET /metrics answered ${res.statusCode}`);
  const series = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    series.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return series;
}

/**
 * CPU time the whole machine lost to the hypervisor (steal) from now until the returned
 * function is called, in ms summed over all cores (/proc/stat, 10 ms ticks). Tells a slow
 * minute of the VM from a slow server.
 */
export function machineSteal(): () => number {
  const read = () =>
    Number(readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/)[8]) * (1000 / CLOCK_TICKS_PER_SECOND);
  const start = read();
  return () => read() - start;
}

/** User + system CPU time a process has used so far, in ms (Linux /proc; clock ticks of 10 ms). */
export function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name (which may contain spaces): utime is the 14th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
}
/** Pids of every process whose command name (/proc/<pid>/comm) is `comm`. */
export function pidsNamed(comm: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === comm) pids.push(Number(entry));
    } catch {
      /* gone meanwhile */
    }
  }
  return pids;
}

/** The pids given and every process descended from them (/proc: each process's parent). */
function withDescendants(pids: readonly number[]): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
    } catch {
      /* gone meanwhile */
    }
  }
  const all = [...pids];
  for (let i = 0; i < all.length; i++) all.push(...(children.get(all[i]!) ?? []));
  return all;
}

/**
 * Gives Redis's main thread the machine's last core to itself while a load runs, as a Redis on
 * a host of its own has it: pinned there under SCHED_FIFO (no process of the bench preempts it in
 * the middle of a command), with `others` (pids, with their threads and child processes) kept
 * off that core. PostgreSQL keeps every core (FIFO puts Redis first on its own). Answers the
 * function that puts everything back, or why it cannot be done here.
 */
export function redisOnOwnCore(redisPid: number, others: readonly number[]): (() => void) | string {
  const cores = os.cpus().length;
  if (cores < 2) return 'fewer than 2 cores';
  if (process.getuid?.() !== 0) return 'not root';
  try {
    if (!readFileSync(`/proc/${redisPid}/comm`, 'utf8').startsWith('redis-server')) throw new Error();
  } catch {
    return 'Redis does not run on this machine';
  }
  const pin = (cpus: string, pids: readonly number[], threads: boolean) => {
    for (const pid of pids) {
      try {
        execFileSync('taskset', [...(threads ? ['-a'] : []), '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
      } catch {
        /* ended meanwhile */
      }
    }
  };
  const all = `0-${cores - 1}`;
  pin(`0-${cores - 2}`, withDescendants(others), true);
  pin(String(cores - 1), [redisPid], false);
  execFileSync('chrt', ['-f', '-p', '10', String(redisPid)]);
  return () => {
    execFileSync('chrt', ['-o', '-p', '0', String(redisPid)]);
    pin(all, [redisPid], false);
    pin(all, withDescendants(others), true);
  };
}

/**
 * CPU time spent by groups of processes from now on: `stop()` answers ms per group. A group's
 * pids are read again at the end (PostgreSQL starts a backend per connection), and a process
 * that ended meanwhile counts for what it had used at the start only.
 */
export function cpuSpent(groups: Record<string, () => number[]>): () => Record<string, number> {
  const read = (pids: number[]) =>
    new Map(
      pids.flatMap((pid) => {
        try {
          return [[pid, processCpuMs(pid)] as const];
        } catch {
          return [];
        }
      }),
    );
  const start = Object.fromEntries(Object.entries(groups).map(([k, pids]) => [k, read(pids())]));
  return () =>
    Object.fromEntries(
      Object.entries(groups).map(([k, pids]) => {
        const end = read(pids());
        let ms = 0;
        for (const [pid, t] of end) ms += t - (start[k]!.get(pid) ?? 0);
        return [k, ms];
      }),
    );
}
/** USER_HZ: 100 on every Linux architecture Node supports. */
const CLOCK_TICKS_PER_SECOND = 100;

/**
 * How steady the machine's own speed is: one worker thread per core repeats a fixed piece of
 * work for `seconds`, counting how many pieces each 100 ms window holds, every core on the
 * same grid of windows. On a steady machine every window holds about the same. On a VM whose
 * host pauses it, windows lose work on every core at once — no guest counter shows it as
 * steal — and a latency tail measured meanwhile says more about the host than about the code
 * (finding 27). A guest process busy on every core would look the same: run it while the
 * bench is idle.
 */
export interface Steadiness {
  /** 100 ms windows measured per core. */
  windows: number;
  /** The work of the slowest window on any core, as a fraction of the median window's. */
  slowest: number;
  /** Windows in which every core did under DIP of the median's work: the whole VM slowed. */
  jointDips: number;
  /** The work those windows missed, in ms of one core (mean over the cores). */
  jointLostMs: number;
}
const WINDOW_MS = 100;
const DIP = 0.8;

export async function machineSteadiness(seconds: number, cores: number): Promise<Steadiness> {
  const { Worker } = await import('node:worker_threads');
  // Every worker waits for one absolute start, so window k covers the same 100 ms on each core.
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const clock = () => performance.timeOrigin + performance.now();
    while (clock() < workerData.startAt) {}
    const counts = [];
    let x = 0, n = 0, windowEnd = workerData.startAt + ${WINDOW_MS};
    const end = workerData.startAt + workerData.ms;
    for (;;) {
      for (let i = 0; i < 20000; i++) x = (x * 31 + i) | 0;
      n++;
      const t = clock();
      if (t < windowEnd) continue;
      // A window the thread did not run in at all counts as empty.
      while (t >= windowEnd) { counts.push(n); n = 0; windowEnd += ${WINDOW_MS}; }
      if (t >= end) break;
    }
    parentPort.postMessage({ counts, x });`;
  const startAt = now() + 300; // time for the threads to start
  const perCore = await Promise.all(
    Array.from(
      { length: cores },
      () =>
        new Promise<number[]>((resolve, reject) => {
          const w = new Worker(code, { eval: true, workerData: { startAt, ms: seconds * 1000 } });
          // The first window includes compiling the loop.
          w.once('message', (m: { counts: number[] }) => resolve(m.counts.slice(1)));
          w.once('error', reject);
          w.once('exit', (code) => reject(new Error(`steadiness worker exited (${code}) without reporting`)));
        }),
    ),
  );
  const all = perCore.flat().sort((a, b) => a - b);
  const mid = all[Math.floor(all.length / 2)]!;
  const windows = Math.min(...perCore.map((c) => c.length));
  let jointDips = 0;
  let jointLost = 0;
  for (let k = 0; k < windows; k++) {
    if (!perCore.every((c) => c[k]! < DIP * mid)) continue;
    jointDips++;
    for (const c of perCore) jointLost += (1 - c[k]! / mid) * WINDOW_MS;
  }
  return { windows, slowest: all[0]! / mid, jointDips, jointLostMs: jointLost / cores };
}
