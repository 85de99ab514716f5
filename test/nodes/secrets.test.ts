import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { CreateNode, MeWithNodes, Nodes, TestNodeConnection, UpdateNode } from './documents.js';

/** Distinctive values that must never appear in a response, a log line or a database column. */
const TOKEN_SECRET = 'ts-5f1c0d9e-8a7b-4c3d-9e2f-SECRETVALUE';
const NEW_TOKEN_SECRET = 'ts-0a1b2c3d-ROTATED-SECRET-VALUE';
const SSH_PASSWORD = 'ssh-PLAINTEXT-password-7731';

describe('secrets stay secret', () => {
  let server: TestServer;
  let sim: Simulator;
  const logLines: string[] = [];
  const responses: string[] = [];

  beforeAll(async () => {
    sim = await startTestSimulator({
      tokens: [
        { id: 'root@pam!dash', secret: TOKEN_SECRET },
        { id: 'root@pam!new', secret: NEW_TOKEN_SECRET },
      ],
    });
    server = await startTestServer({
      env: { LOG_LEVEL: 'trace' },
      logStream: { write: (line) => void logLines.push(line) },
    });
  });
  afterAll(async () => {
    await Promise.all([server.stop(), sim.stop()]);
  });

  it('never returns, logs or stores the token secret or SSH password in plain text', async () => {
    const { token } = await server.createUser();
    const record = <T>(res: T) => {
      responses.push(JSON.stringify(res));
      return res;
    };
    const input = nodeInputFor(sim, { tokenId: 'root@pam!dash', tokenSecret: TOKEN_SECRET, sshPassword: SSH_PASSWORD });
    const created = record(await server.gql(CreateNode, { input: input as never }, token));
    const id = created.data!.createNode.id;
    // Failures carry messages from Proxmox and the client: they must not echo secrets either.
    record(
      await server.gql(
        CreateNode,
        { input: { ...input, name: 'bad', tokenSecret: TOKEN_SECRET + 'x' } as never },
        token,
      ),
    );
    record(
      await server.gql(UpdateNode, { input: { id, tokenId: 'root@pam!new', tokenSecret: NEW_TOKEN_SECRET } }, token),
    );
    record(await server.gql(UpdateNode, { input: { id, port: 1, tokenSecret: TOKEN_SECRET } }, token));
    record(await server.gql(TestNodeConnection, { id }, token));
    record(await server.gql(Nodes, {}, token));
    record(await server.gql(MeWithNodes, {}, token));
    // A malformed request that echoes variables back in validation errors.
    responses.push(
      await (
        await fetch(server.graphqlUrl, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          body: JSON.stringify({
            query: 'mutation($i: CreateNodeInput!) { createNode(input: $i) { id } }',
            variables: { i: { tokenSecret: TOKEN_SECRET } },
          }),
        })
      ).text(),
    );

    expect(created.errors).toBeUndefined();
    expect(logLines.length).toBeGreaterThan(0);
    const dump = await databaseDump(server.databaseUrl);
    expect(dump).toContain('enc:v1:');
    for (const secret of [TOKEN_SECRET, NEW_TOKEN_SECRET, SSH_PASSWORD, token]) {
      for (const [where, text] of [
        ['responses', responses.join('\n')],
        ['logs', logLines.join('')],
        ['database', dump],
      ] as const) {
        if (where === 'database' && secret === token) continue; // only its hash is stored, checked below
        expect(
          text.includes(secret),
          `${where} contain a secret: ${text
            .split('\n')
            .filter((l) => l.includes(secret))
            .join('\n')
            .slice(0, 3000)}`,
        ).toBe(false);
      }
    }
    expect(dump.includes(token)).toBe(false);
    // The malformed request still says precisely what is wrong.
    expect(responses.at(-1)).toContain('"code":"BAD_USER_INPUT"');
    expect(responses.at(-1)).toContain('i.host');
  });
});

/** Every row of every table of the public schema, as text. */
async function databaseDump(url: string): Promise<string> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const { rows: tables } = await client.query<{ tablename: string }>(
      `SELECT tablename FROM pg_tables WHERE schemaname = 'public'`,
    );
    const parts: string[] = [];
    for (const { tablename } of tables) {
      const { rows } = await client.query(`SELECT row_to_json(t)::text AS j FROM "${tablename}" t`);
      parts.push(...rows.map((r: { j: string }) => r.j));
    }
    return parts.join('\n');
  } finally {
    await client.end();
  }
}
