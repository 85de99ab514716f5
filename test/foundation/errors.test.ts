import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { graphql } from '../gql/index.js';
import { TEST_POSTGRES_URL } from '../support/env.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { createTestDatabase } from '../support/test-database.js';
import { startTestServer, type TestServer } from '../support/test-server.js';

const MyNodes = graphql(`
  query MyNodes {
    nodes { id }
  }
`);

describe('unexpected errors', () => {
  let server: TestServer;
  let pgRelay: TcpProxy;
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  const logs: string[] = [];

  beforeAll(async () => {
    db = await createTestDatabase();
    const pgUrl = new URL(TEST_POSTGRES_URL);
    pgRelay = await startTcpProxy(pgUrl.hostname, Number(pgUrl.port || 5432));
    const viaRelay = new URL(db.url);
    viaRelay.host = `127.0.0.1:${pgRelay.port}`;
    server = await startTestServer({
      databaseUrl: viaRelay.toString(),
      env: { LOG_LEVEL: 'error' },
      logStream: { write: (line) => void logs.push(line) },
    });
  });
  afterAll(async () => {
    await server.stop();
    await pgRelay.close();
    await db.drop();
  });

  it('are answered as INTERNAL_SERVER_ERROR without details, logged, and the server recovers by itself', async () => {
    const { token } = await server.createUser();
    expect((await server.gql(MyNodes, {}, token)).data?.nodes).toEqual([]);

    await pgRelay.down();
    const res = await server.gql(MyNodes, {}, token);
    expect(res.errors).toEqual([{ message: 'Unexpected error.', path: ['nodes'], extensions: { code: 'INTERNAL_SERVER_ERROR' } }]);
    expect(logs.some((l) => l.includes('unexpected error in resolver'))).toBe(true);
    expect((await fetch(`${server.url}/readyz`)).status).toBe(503);

    await pgRelay.up();
    await expect.poll(async () => (await server.gql(MyNodes, {}, token)).data?.nodes, { timeout: 15_000 }).toEqual([]);
  });
});
