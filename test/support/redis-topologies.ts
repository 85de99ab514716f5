import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { Redis } from 'ioredis';

/**
 * Local Redis Clusters and Sentinel groups for the tests, from the Debian `redis-server` the
 * single test Redis comes from: loopback ports, no persistence, each in a temp directory that
 * stop() removes. Every process is started daemonized with a pidfile, and stop() ends those
 * pids (and only those).
 *
 * Ports (kept apart from everything else on the machine): 7100–7199 for Redis nodes, 26400+
 * for sentinels. A node still answering on one of them is a leftover of an earlier run of
 * these tests: it is shut down first.
 */

const run = promisify(execFile);

/**
 * The test run's ports, from TEST_REDIS_PORT_BASE (default 7100; set it to run two test runs on
 * one machine at once): the shared cluster base…+5, the shared Sentinel group's Redis +10/+11
 * with sentinels +19300…, the failover test's cluster +20…+25 and Sentinel group +30/+31 with
 * sentinels +19310….
 */
const PORT_BASE = Number(process.env.TEST_REDIS_PORT_BASE ?? 7100);
export const TEST_PORTS = {
  cluster: PORT_BASE,
  sentinelRedis: PORT_BASE + 10,
  sentinels: PORT_BASE + 19_300,
  failoverCluster: PORT_BASE + 20,
  failoverSentinelRedis: PORT_BASE + 30,
  failoverSentinels: PORT_BASE + 19_310,
};

/** Fast failovers: a master is declared failed after this long without answers (the failover tests' own topologies). */
export const NODE_TIMEOUT_MS = 1_000;
/**
 * The topologies every other test shares: no test kills their nodes, and a loaded machine
 * (a whole suite on two cores) can leave a node unanswered for a second, which with
 * NODE_TIMEOUT_MS would fail it over under the tests' feet.
 */
export const SHARED_NODE_TIMEOUT_MS = 15_000;

export interface RedisNode {
  port: number;
  /** The pid the node reports itself (INFO server process_id). */
  pid(): Promise<number>;
}

export interface RedisTopology {
  /** REDIS_URL for pvegraph. */
  url: string;
  nodes: RedisNode[];
  stop(): Promise<void>;
}

function node(port: number): RedisNode {
  return {
    port,
    pid: async () => {
      const info = await withClient(port, (r) => r.info('server'));
      const m = /process_id:(\d+)/.exec(info);
      if (!m) throw new Error(`no process_id in INFO of 127.0.0.1:${port}`);
      return Number(m[1]);
    },
  };
}

async function withClient<T>(port: number, fn: (r: Redis) => Promise<T>): Promise<T> {
  const r = new Redis({
    host: '127.0.0.1',
    port,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 1_000,
  });
  r.on('error', () => undefined);
  try {
    await r.connect();
    return await fn(r);
  } finally {
    r.disconnect();
  }
}

async function answers(port: number): Promise<boolean> {
  try {
    return (await withClient(port, (r) => r.ping())) === 'PONG';
  } catch {
    return false;
  }
}

/** Polls `check` until it holds (conditions, not sleeps), or fails naming `what`. */
export async function until(check: () => Promise<boolean>, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function clearLeftover(port: number): Promise<void> {
  if (!(await answers(port))) return;
  await withClient(port, (r) => r.call('SHUTDOWN', 'NOSAVE')).catch(() => undefined);
  await until(async () => !(await answers(port)), `leftover on port ${port} to stop`, 10_000);
}

async function startServer(dir: string, port: number, args: string[], configFile?: string): Promise<void> {
  await clearLeftover(port);
  const pidfile = path.join(dir, `${port}.pid`);
  const base = [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
    '--daemonize',
    'yes',
  ];
  const files = ['--pidfile', pidfile, '--logfile', path.join(dir, `${port}.log`), '--dir', dir];
  await run('redis-server', [...(configFile ? [configFile] : []), ...base, ...files, ...args]);
  await until(() => answers(port), `redis-server on port ${port}`, 15_000);
}

async function stopPids(dir: string, ports: number[]): Promise<void> {
  for (const port of ports) {
    const pid = Number(await readFile(path.join(dir, `${port}.pid`), 'utf8').catch(() => ''));
    if (!pid) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Gone already (a failover test killed it).
    }
  }
}

/**
 * A Redis Cluster of three masters with one replica each on ports base…base+5
 * (`redis-cli --cluster create … --cluster-replicas 1`), ready when every node says
 * cluster_state:ok and every replica is in sync with its master.
 */
export async function startRedisCluster(basePort: number, nodeTimeoutMs = NODE_TIMEOUT_MS): Promise<RedisTopology> {
  const dir = await mkdtemp(path.join(tmpdir(), 'pvg-cluster-'));
  const ports = [0, 1, 2, 3, 4, 5].map((i) => basePort + i);
  const topology: RedisTopology = {
    url: `redis+cluster://${ports
      .slice(0, 3)
      .map((p) => `127.0.0.1:${p}`)
      .join(',')}`,
    nodes: ports.map(node),
    async stop() {
      await stopPids(dir, ports);
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await Promise.all(
      ports.map((port) =>
        startServer(dir, port, [
          '--cluster-enabled',
          'yes',
          '--cluster-config-file',
          path.join(dir, `nodes-${port}.conf`),
          '--cluster-node-timeout',
          String(nodeTimeoutMs),
          // A replica takes over however long it was apart from its master (tests kill masters at will).
          '--cluster-replica-validity-factor',
          '0',
        ]),
      ),
    );
    await run('redis-cli', [
      '--cluster',
      'create',
      ...ports.map((p) => `127.0.0.1:${p}`),
      '--cluster-replicas',
      '1',
      '--cluster-yes',
    ]);
    await until(async () => {
      for (const port of ports) {
        const ok = await withClient(port, async (r) => {
          if (!(await r.cluster('INFO')).includes('cluster_state:ok')) return false;
          const replication = await r.info('replication');
          return !replication.includes('role:slave') || replication.includes('master_link_status:up');
        });
        if (!ok) return false;
      }
      return true;
    }, 'the cluster to be ready');
    return topology;
  } catch (err) {
    await topology.stop();
    throw err;
  }
}

/**
 * A Sentinel group: a master on `basePort`, its replica on basePort+1, and three sentinels on
 * sentinelBase…+2 (quorum two) that fail over after NODE_TIMEOUT_MS without answers. Each
 * sentinel gets a writable config file (Sentinel rewrites it).
 */
export async function startSentinelGroup(
  basePort: number,
  sentinelBase: number,
  masterName = 'pvgmaster',
  nodeTimeoutMs = NODE_TIMEOUT_MS,
): Promise<RedisTopology> {
  const dir = await mkdtemp(path.join(tmpdir(), 'pvg-sentinel-'));
  const [masterPort, replicaPort] = [basePort, basePort + 1];
  const sentinelPorts = [0, 1, 2].map((i) => sentinelBase + i);
  const all = [masterPort, replicaPort, ...sentinelPorts];
  const topology: RedisTopology = {
    url: `redis+sentinel://${sentinelPorts.map((p) => `127.0.0.1:${p}`).join(',')}/${masterName}`,
    nodes: [node(masterPort), node(replicaPort)],
    async stop() {
      await stopPids(dir, all);
      await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    await startServer(dir, masterPort, []);
    await startServer(dir, replicaPort, ['--replicaof', '127.0.0.1', String(masterPort)]);
    await until(
      async () => (await withClient(replicaPort, (r) => r.info('replication'))).includes('master_link_status:up'),
      'the replica to sync',
    );
    for (const port of sentinelPorts) {
      const conf = path.join(dir, `sentinel-${port}.conf`);
      await writeFile(
        conf,
        [
          `sentinel monitor ${masterName} 127.0.0.1 ${masterPort} 2`,
          `sentinel down-after-milliseconds ${masterName} ${nodeTimeoutMs}`,
          `sentinel failover-timeout ${masterName} 5000`,
          `sentinel parallel-syncs ${masterName} 1`,
          '',
        ].join('\n'),
      );
      // Sentinel rejects --save / --appendonly; it takes its own config file.
      await clearLeftover(port);
      await run('redis-server', [
        conf,
        '--sentinel',
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--daemonize',
        'yes',
        '--pidfile',
        path.join(dir, `${port}.pid`),
        '--logfile',
        path.join(dir, `${port}.log`),
        '--dir',
        dir,
      ]);
      await until(() => answers(port), `sentinel on port ${port}`, 15_000);
    }
    await until(async () => {
      for (const port of sentinelPorts) {
        const replicas = (await withClient(port, (r) => r.call('SENTINEL', 'REPLICAS', masterName))) as unknown[];
        const others = Number(
          await withClient(port, (r) => r.call('SENTINEL', 'CKQUORUM', masterName)).then(
            () => 1,
            () => 0,
          ),
        );
        if (replicas.length < 1 || others < 1) return false;
      }
      return true;
    }, 'the sentinels to know the replica and reach their quorum');
    return topology;
  } catch (err) {
    await topology.stop();
    throw err;
  }
}
