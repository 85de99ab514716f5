import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { graphql } from '../gql/index.js';
import { CreateNode } from '../nodes/documents.js';
import { TEST_POSTGRES_URL } from '../support/env.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { adminQuery, createTestDatabase } from '../support/test-database.js';
import { startTestServer, type TestServer } from '../support/test-server.js';

const MyNodes = graphql(`
  query MyNodes {
    nodes {
      id
    }
  }
`);

describe('errors a client cannot fix', () => {
  let server: TestServer;
  let pgRelay: TcpProxy;
  let sim: Simulator;
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  const logs: string[] = [];

  beforeAll(async () => {
    [db, sim] = await Promise.all([createTestDatabase(), startTestSimulator()]);
    const pgUrl = new URL(TEST_POSTGRES_URL);
    pgRelay = await startTcpProxy(pgUrl.hostname, Number(pgUrl.port || 5432));
    const viaRelay = new URL(db.url);
    viaRelay.host = `127.0.0.1:${pgRelay.port}`;
    server = await startTestServer({
      databaseUrl: viaRelay.toString(),
      env: { LOG_LEVEL: 'warn' },
      logStream: { write: (line) => void logs.push(line) },
    });
  });
  afterAll(async () => {
    await server.stop();
    await pgRelay.close();
    await Promise.all([db.drop(), sim.stop()]);
  });

  it('answers SERVICE_UNAVAILABLE while PostgreSQL is unreachable and recovers by itself', async () => {
    const { token } = await server.createUser();
    expect((await server.gql(MyNodes, {}, token)).data?.nodes).toEqual([]);

    await pgRelay.down();
    const res = await server.gql(MyNodes, {}, token);
    expect(res.errors).toEqual([
      {
        message: 'The database is unreachable right now; try again shortly.',
        path: ['nodes'],
        extensions: { code: 'SERVICE_UNAVAILABLE' },
      },
    ]);
    expect((await fetch(`${server.url}/readyz`)).status).toBe(503);

    await pgRelay.up();
    await expect.poll(async () => (await server.gql(MyNodes, {}, token)).data?.nodes, { timeout: 15_000 }).toEqual([]);
  });

  it('masks anything unexpected as INTERNAL_SERVER_ERROR without details, and logs it with the request id', async () => {
    const { token } = await server.createUser();
    const node = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode;
    // A stored secret that no configured key can decrypt (say, the key was lost): a bug or an
    // operator error, nothing the client can act on.
    await adminQuery(
      `UPDATE proxmox_nodes SET token_secret_enc = 'enc:v1:00000000:AAAA:AAAA:AAAA' WHERE id = $1`,
      [node.id],
      db.name,
    );
    logs.length = 0;
    const res = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, 'x-request-id': 'trace-me-42' },
      body: JSON.stringify({
        query: 'mutation($id: ID!) { testNodeConnection(id: $id) { ok } }',
        variables: { id: node.id },
      }),
    });
    const body = (await res.json()) as { errors: unknown[] };
    expect(body.errors).toEqual([
      { message: 'Unexpected error.', path: ['testNodeConnection'], extensions: { code: 'INTERNAL_SERVER_ERROR' } },
    ]);
    const logged = logs.find((l) => l.includes('unexpected error in resolver'));
    expect(logged).toBeDefined();
    expect(logged).toContain('trace-me-42');
    expect(logged).toMatch(/no configured encryption key/);
  });
});
