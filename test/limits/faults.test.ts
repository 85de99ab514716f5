import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateNode, Nodes, TestNodeConnection } from '../nodes/documents.js';
import { TEST_POSTGRES_URL, TEST_REDIS_URL } from '../support/env.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { createTestDatabase } from '../support/test-database.js';
import { type GraphQLResponse, startTestServer, type TestServer } from '../support/test-server.js';
import { InvalidateVmidCache, ReserveVmid, VmidsTaken } from '../vmids/documents.js';

/** Codes a client may see while a dependency is slow or gone: all of them say what to do. */
const FAULT_CODES = new Set([
  'PROXMOX_TIMEOUT',
  'PROXMOX_UNREACHABLE',
  'PROXMOX_ERROR',
  'SERVICE_UNAVAILABLE',
  'CONFLICT',
]);

describe('faults under load', () => {
  let server: TestServer;
  let sim: Simulator;
  let pg: TcpProxy;
  let redis: TcpProxy;
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  const errorLog: string[] = [];

  beforeAll(async () => {
    [db, sim] = await Promise.all([createTestDatabase(), startTestSimulator({ guests: 30 })]);
    const pgUrl = new URL(TEST_POSTGRES_URL);
    const redisUrl = new URL(TEST_REDIS_URL);
    [pg, redis] = await Promise.all([
      startTcpProxy(pgUrl.hostname, Number(pgUrl.port || 5432)),
      startTcpProxy(redisUrl.hostname, Number(redisUrl.port || 6379)),
    ]);
    const viaRelay = new URL(db.url);
    viaRelay.host = `127.0.0.1:${pg.port}`;
    server = await startTestServer({
      databaseUrl: viaRelay.toString(),
      env: { REDIS_URL: redis.url('redis'), PROXMOX_TIMEOUT_MS: '800', VMID_CACHE_TTL_S: '1', LOG_LEVEL: 'error' },
      logStream: { write: (line) => void errorLog.push(line) },
    });
  });
  afterAll(async () => {
    await server.stop();
    await Promise.all([pg.close(), redis.close(), sim.stop()]);
    await db.drop();
  });

  it(
    'answers every request with data or a clear error while Proxmox, Redis and PostgreSQL fail in turn, and recovers without a restart',
    { timeout: 60_000 },
    async () => {
      const { token } = await server.createUser();
      const nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;

      const answers: Array<GraphQLResponse<unknown>> = [];
      let running = true;
      const load = (async () => {
        while (running) {
          const batch = await Promise.all([
            server.gql(VmidsTaken, { nodeId }, token),
            server.gql(Nodes, {}, token),
            server.gql(ReserveVmid, { nodeId, ttlSeconds: 5 }, token),
            server.gql(InvalidateVmidCache, { nodeId }, token),
            server.gql(VmidsTaken, { nodeId }, token),
          ]);
          answers.push(...(batch as Array<GraphQLResponse<unknown>>));
        }
      })();
      const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

      await pause(300);
      sim.addFault({ kind: 'latency', ms: 1_500 }); // Proxmox slower than PROXMOX_TIMEOUT_MS
      await pause(1_200);
      sim.clearFaults();
      sim.addFault({ kind: 'reset' }); // Proxmox drops every connection
      await pause(600);
      sim.clearFaults();
      await redis.down();
      await pause(800);
      await redis.up();
      await pause(300);
      await pg.down();
      await pause(800);
      await pg.up();
      await pause(1_500);
      running = false;
      await load;

      expect(answers.length).toBeGreaterThan(50);
      const codes = new Map<string, number>();
      for (const a of answers) {
        expect(a.data !== undefined || a.errors !== undefined).toBe(true);
        for (const e of a.errors ?? []) {
          const code = String(e.extensions?.code);
          codes.set(code, (codes.get(code) ?? 0) + 1);
          expect(FAULT_CODES.has(code), `unexpected ${code}: ${e.message}\n${errorLog.join('').slice(0, 4000)}`).toBe(
            true,
          );
        }
      }
      // Each fault was actually felt by clients.
      expect([...codes.keys()]).toEqual(expect.arrayContaining(['PROXMOX_TIMEOUT', 'SERVICE_UNAVAILABLE']));

      // Recovered: every kind of request works again on the same process.
      await expect
        .poll(async () => (await server.gql(VmidsTaken, { nodeId }, token)).errors, { timeout: 10_000 })
        .toBeUndefined();
      expect((await server.gql(ReserveVmid, { nodeId }, token)).errors).toBeUndefined();
      expect((await server.gql(TestNodeConnection, { id: nodeId }, token)).data?.testNodeConnection.ok).toBe(true);
      expect((await fetch(`${server.url}/readyz`)).status).toBe(200);
    },
  );
});
