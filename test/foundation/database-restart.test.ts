import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateNode } from '../nodes/documents.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { adminQuery } from '../support/test-database.js';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { ReserveVmid, VmidsTaken } from '../vmids/documents.js';

/**
 * PostgreSQL ends the server's connections (a restart, a failover, an operator's
 * pg_terminate_backend): the pools drop them and connect afresh, and the next reservation is
 * recorded as if nothing had happened.
 */
describe('the database ends every connection', () => {
  let server: TestServer;
  let sim: Simulator;

  beforeAll(async () => {
    [server, sim] = await Promise.all([startTestServer(), startTestSimulator({ guests: 2 })]);
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  it('the server goes on: reservations are recorded again through new connections', async () => {
    const { token } = await server.createUser();
    const nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
    await server.gql(VmidsTaken, { nodeId }, token);
    // Both pools (Prisma's statements and the reservation record's) hold open connections now.
    const first = await server.gql(ReserveVmid, { nodeId, vmid: 4000, ttlSeconds: 60 }, token);
    expect(first.errors).toBeUndefined();

    const database = new URL(server.databaseUrl).pathname.slice(1);
    const ended = await adminQuery(
      'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
      [database],
    );
    expect(ended.rowCount).toBeGreaterThan(0);
    await sleep(200); // the idle connections learn of it

    const again = await server.gql(ReserveVmid, { nodeId, vmid: 4001, ttlSeconds: 60 }, token);
    expect(again.errors).toBeUndefined();
    expect(again.data!.reserveVmid.vmid).toBe(4001);
    const taken = await server.gql(VmidsTaken, { nodeId }, token);
    expect(taken.data!.vmidsTaken.reserved).toEqual([4000, 4001]);
  });
});
