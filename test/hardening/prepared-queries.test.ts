import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateNode } from '../nodes/documents.js';
import { TEST_POSTGRES_URL } from '../support/env.js';
import { fastPathsOn } from '../support/fast-paths.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { startTcpProxy } from '../support/tcp-proxy.js';
import { adminQuery, createTestDatabase } from '../support/test-database.js';
import { startTestServer, type TestServer } from '../support/test-server.js';

/**
 * The prepared-query path (src/fast-paths/prepared-query-path.ts) answers a query document Yoga has
 * run once without Yoga's HTTP handling. To a client it must be invisible: same answers, same
 * auth, same errors, same logs and metrics. Each test uses its own query texts (operation
 * names carry a counter), so what one test teaches the server does not leak into another.
 */

interface Answer {
  status: number;
  contentType: string | null;
  body: string;
  headers: Headers;
}

interface Send {
  token?: string | null;
  accept?: string;
  headers?: Record<string, string>;
}

type Path = 'prepared' | 'refused' | 'not_eligible' | 'not_prepared' | 'unauthenticated' | 'invalid_variables';

let server: TestServer;
let sim: Simulator;
let alice: { token: string; userId: string };
let aliceNode: string;
const logs: string[] = [];
let seq = 0;
/** A query text no other request of this file has sent. */
const fresh = <T>(template: (name: string) => T): T => template(`Op${++seq}`);

async function post(body: unknown, { token = alice.token, accept, headers = {} }: Send = {}): Promise<Answer> {
  const res = await fetch(server.graphqlUrl, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      ...(accept !== undefined ? { accept } : {}),
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...headers,
    },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return {
    status: res.status,
    contentType: res.headers.get('content-type'),
    body: await res.text(),
    headers: res.headers,
  };
}

async function metricsText(): Promise<string> {
  return (await fetch(`${server.url}/metrics`)).text();
}

function metricValue(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : 0;
}

/** How many requests took each path while `fn` ran. */
async function pathsDuring<T>(fn: () => Promise<T>): Promise<{ result: T; took: Record<Path, number> }> {
  const paths: Path[] = ['prepared', 'refused', 'not_eligible', 'not_prepared', 'unauthenticated', 'invalid_variables'];
  const read = async () => {
    const text = await metricsText();
    return paths.map((p) => metricValue(text, `pvegraph_graphql_prepared_requests_total{path="${p}"}`));
  };
  const before = await read();
  const result = await fn();
  const after = await read();
  return { result, took: Object.fromEntries(paths.map((p, i) => [p, after[i]! - before[i]!])) as Record<Path, number> };
}

const none = { prepared: 0, refused: 0, not_eligible: 0, not_prepared: 0, unauthenticated: 0, invalid_variables: 0 };

/** What a client sees of an answer (headers that differ by nature — date — left out). */
const visible = (a: Answer, extra: string[] = []) => ({
  status: a.status,
  contentType: a.contentType,
  body: a.body,
  ...Object.fromEntries(extra.map((h) => [h, a.headers.get(h)])),
});

/**
 * Sends a never-seen request twice: Yoga answers the first, the prepared path the second.
 * `mayRefuse`: the prepared path may also hand the second back to Yoga before executing
 * anything (counted under a label of its own, e.g. for variables it refuses to coerce).
 */
async function yogaThenPrepared(body: Record<string, unknown>, send: Send = {}, mayRefuse = false) {
  const first = await pathsDuring(() => post(body, send));
  expect(first.took).toEqual({ ...none, not_prepared: 1 });
  const second = await pathsDuring(() => post(body, send));
  // Refused variables: nothing ran on the prepared path, Yoga words the error.
  expect(second.took).toEqual(mayRefuse ? { ...none, invalid_variables: 1 } : { ...none, prepared: 1 });
  return [first.result, second.result] as const;
}

beforeAll(async () => {
  sim = await startTestSimulator();
  server = await startTestServer({ env: { LOG_LEVEL: 'info' }, logStream: { write: (line) => void logs.push(line) } });
  alice = await server.createUser();
  const created = await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, alice.token);
  aliceNode = created.data!.createNode.id;
});
afterAll(async () => {
  await server?.stop();
  await sim?.stop();
});

const ACCEPTS = [
  undefined,
  '*/*',
  'application/json',
  'application/graphql-response+json',
  'application/graphql-response+json, application/json;q=0.9',
];
const DOCUMENTS = {
  vmidsTaken: (name: string) => ({
    query: `query ${name}($n: ID!) { vmidsTaken(nodeId: $n) { taken reserved version } }`,
    variables: { n: aliceNode },
    operationName: name,
  }),
  me: (name: string) => ({ query: `{ ${name}: me { id name } }` }),
};

// Skipped with the fast paths off (PVEGRAPH_FAST_PATHS=false): this tests one.
describe.skipIf(!fastPathsOn)('prepared-query path', () => {
  // A dashboard repeating a query gets the very answer it got the first time, whatever it accepts.
  describe.each(Object.keys(DOCUMENTS) as Array<keyof typeof DOCUMENTS>)('answers %s as Yoga does', (doc) => {
    it.each(ACCEPTS.map((a) => [a ?? '(no Accept)', a] as const))('Accept: %s', async (_label, accept) => {
      const [yoga, prepared] = await yogaThenPrepared(fresh(DOCUMENTS[doc]), { accept });
      expect(yoga.status).toBe(200);
      expect(JSON.parse(yoga.body).errors).toBeUndefined();
      expect(visible(prepared)).toEqual(visible(yoga));
    });

    it('with an Origin header, including the CORS headers', async () => {
      const cors = ['access-control-allow-origin', 'vary', 'access-control-allow-credentials'];
      const [yoga, prepared] = await yogaThenPrepared(fresh(DOCUMENTS[doc]), {
        headers: { origin: 'https://dash.example' },
      });
      expect(yoga.headers.get('access-control-allow-origin')).toBe('https://dash.example');
      expect(visible(prepared, cors)).toEqual(visible(yoga, cors));
    });
  });

  // A client's mistakes are worded, coded and given the HTTP status the same way on both paths.
  describe.each(['application/json', 'application/graphql-response+json'])('errors (Accept: %s)', (accept) => {
    const cors = ['access-control-allow-origin', 'vary', 'access-control-allow-credentials'];
    const send = { accept, headers: { origin: 'https://dash.example' } };

    it.each([
      [
        "another user's node",
        async () =>
          (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, (await server.createUser()).token)).data!
            .createNode.id,
      ],
      ['an unknown node id', async () => randomUUID()],
    ])('NOT_FOUND for %s', async (_label, nodeId) => {
      const body = { ...fresh(DOCUMENTS.vmidsTaken), variables: { n: await nodeId() } };
      const [yoga, prepared] = await yogaThenPrepared(body, send);
      expect(JSON.parse(yoga.body).errors[0].extensions.code).toBe('NOT_FOUND');
      expect(visible(prepared, cors)).toEqual(visible(yoga, cors));
    });

    it.each([
      ['a string for an Int', { n: 'x', v: 'abc' }, 'BAD_USER_INPUT'],
      ['an object for an ID', { n: { id: 'x' }, v: 1 }, 'BAD_USER_INPUT'],
      ['a missing required variable', { n: 'x' }, 'GRAPHQL_VALIDATION_FAILED'],
    ])('%s', async (_label, variables, code) => {
      const body = {
        query: fresh((name) => `query ${name}($n: ID!, $v: Int!) { isVmidTaken(nodeId: $n, vmid: $v) }`),
        variables,
      };
      const [yoga, prepared] = await yogaThenPrepared(body, send, true);
      expect(JSON.parse(yoga.body).errors[0].extensions.code).toBe(code);
      expect(visible(prepared, cors)).toEqual(visible(yoga, cors));
    });
  });

  // Knowing a document never stands in for a token: missing, malformed and revoked tokens are
  // refused exactly as before, and a valid token still only sees its own user's nodes.
  it('never bypasses authentication or ownership', async () => {
    const revoked = await server.createUser();
    const [tokenRow] = await server.runtime.services.auth.listTokens(revoked.name);
    expect(await server.runtime.services.auth.revokeToken(tokenRow!.id)).toBe(1);
    const body = fresh(DOCUMENTS.vmidsTaken);
    const cors = ['access-control-allow-origin', 'vary', 'access-control-allow-credentials'];
    const badTokens: Send[] = [
      { token: null },
      { token: 'not-a-token' },
      { token: revoked.token },
      {
        token: revoked.token,
        accept: 'application/graphql-response+json',
        headers: { origin: 'https://dash.example' },
      },
    ];

    const before: Answer[] = [];
    for (const send of badTokens) before.push(await post(body, send));
    await post(body); // learns the document (if the refused requests have not already)
    expect((await pathsDuring(() => post(body))).took).toEqual({ ...none, prepared: 1 });

    // Refused on the prepared path now (no Yoga pipeline per bad request), answered alike and
    // counted alike (the UNAUTHENTICATED error metric, as Yoga's path records it).
    const errorsBefore = metricValue(await metricsText(), 'pvegraph_graphql_errors_total{code="UNAUTHENTICATED"}');
    const after = await pathsDuring(async () => Promise.all(badTokens.map((send) => post(body, send))));
    expect(after.took).toEqual({ ...none, refused: badTokens.length });
    for (const [i, answer] of after.result.entries()) {
      expect(answer.status).toBe(401);
      expect(JSON.parse(answer.body).errors[0].extensions.code).toBe('UNAUTHENTICATED');
      expect(visible(answer, cors)).toEqual(visible(before[i]!, cors));
    }
    expect(
      metricValue(await metricsText(), 'pvegraph_graphql_errors_total{code="UNAUTHENTICATED"}') - errorsBefore,
    ).toBe(badTokens.length);

    const bob = await server.createUser();
    const asBob = await pathsDuring(() => post(body, { token: bob.token }));
    expect(asBob.took).toEqual({ ...none, prepared: 1 });
    expect(JSON.parse(asBob.result.body)).toMatchObject({
      data: null,
      errors: [{ extensions: { code: 'NOT_FOUND' } }],
    });
  });

  // Introspection needs no token (GraphiQL loads the schema before one is pasted in): a known
  // introspection-only document without a token is Yoga's to answer, not refused.
  // Tokenless requests teach nothing: they could otherwise push dashboards' documents out of
  // the bounded list.
  it('leaves introspection without a token to Yoga, and learns nothing from tokenless requests', async () => {
    const body = { query: fresh((name) => `query ${name} { __typename }`) };
    for (let i = 0; i < 2; i++)
      expect((await pathsDuring(() => post(body, { token: null }))).took).toEqual({ ...none, not_prepared: 1 });
    await post(body); // an authenticated request learns it
    const { result, took } = await pathsDuring(() => post(body, { token: null }));
    expect(took).toEqual({ ...none, unauthenticated: 1 });
    expect(result.status).toBe(200);
    expect(JSON.parse(result.body)).toEqual({ data: { __typename: 'Query' } });
  });

  // A repeated mutation is a second mutation: each reserveVmid hands out its own VMID, on
  // the prepared path too; and a refused variable never runs it twice (Yoga answers it).
  it('runs a prepared mutation every time it is sent, and never twice for one request', async () => {
    const name = `Reserve${++seq}`;
    const query = `mutation ${name}($n: ID!) { reserveVmid(nodeId: $n) { vmid } } query ${name}Me { me { id } }`;
    const reserve = { query, operationName: name, variables: { n: aliceNode } };
    const { result, took } = await pathsDuring(async () => [
      await post(reserve),
      await post(reserve),
      await post(reserve),
    ]);
    expect(took).toEqual({ ...none, not_prepared: 1, prepared: 2 });
    const vmids = result.map(
      (a) => (JSON.parse(a.body) as { data: { reserveVmid: { vmid: number } } }).data.reserveVmid.vmid,
    );
    expect(new Set(vmids).size).toBe(3);

    const held = async () =>
      (
        JSON.parse((await post({ query: `query { vmidsTaken(nodeId: "${aliceNode}") { reserved } }` })).body) as {
          data: { vmidsTaken: { reserved: number[] } };
        }
      ).data.vmidsTaken.reserved.length;
    const before = await held();
    const refused = await pathsDuring(() => post({ ...reserve, variables: {} }));
    expect(refused.took).toEqual({ ...none, invalid_variables: 1 });
    expect(JSON.parse(refused.result.body)).toMatchObject({ errors: [{ extensions: { code: expect.any(String) } }] });
    expect(await held()).toBe(before);
  });

  // Whatever the fast path does not serve still works, answered by Yoga (its data or its errors).
  it('hands everything else to Yoga', async () => {
    const body = fresh(DOCUMENTS.me);
    const [, prepared] = await yogaThenPrepared(body);
    const data = JSON.parse(prepared.body);
    const auth = { authorization: `Bearer ${alice.token}` };

    const viaGet = await pathsDuring(() =>
      fetch(`${server.graphqlUrl}?query=${encodeURIComponent(body.query)}`, { headers: auth }),
    );
    expect(viaGet.took).toEqual({ ...none, not_eligible: 1 });
    expect(await viaGet.result.json()).toEqual(data);

    const withExtensions = await pathsDuring(() => post({ ...body, extensions: {} }));
    expect(withExtensions.took).toEqual({ ...none, not_eligible: 1 });
    expect(JSON.parse(withExtensions.result.body)).toEqual(data);

    const unknownKey = await pathsDuring(() => post({ ...body, colour: 'blue' }));
    expect(unknownKey.took).toEqual({ ...none, not_eligible: 1 });
    expect(unknownKey.result.status).toBe(400);
    expect(unknownKey.result.body).toMatch(/colour/);

    const textPlain = await pathsDuring(() => post(body, { headers: { 'content-type': 'text/plain' } }));
    expect(textPlain.took).toEqual({ ...none, not_eligible: 1 });
    expect(textPlain.result.status).toBeGreaterThanOrEqual(400);

    const sse = await pathsDuring(() => post(body, { accept: 'text/event-stream' }));
    expect(sse.took).toEqual({ ...none, not_eligible: 1 });
    expect(sse.result.contentType).toMatch(/^text\/event-stream/);
    expect(sse.result.body).toContain(JSON.stringify(data));
  });

  // Operators keep seeing every operation: the duration metric and the access-log line (with
  // the client's request id) are written for prepared requests too.
  it('keeps the operation metrics and access log', async () => {
    const body = fresh(DOCUMENTS.vmidsTaken);
    await yogaThenPrepared(body);
    const ok = 'pvegraph_graphql_operation_duration_seconds_count{type="query",outcome="ok"}';
    const before = metricValue(await metricsText(), ok);
    const { result, took } = await pathsDuring(() => post(body, { headers: { 'x-request-id': `prepared-${seq}` } }));
    expect(took).toEqual({ ...none, prepared: 1 });
    expect(result.headers.get('x-request-id')).toBe(`prepared-${seq}`);
    expect(metricValue(await metricsText(), ok)).toBe(before + 1);
    const logged = logs
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.requestId === `prepared-${seq}`);
    expect(logged).toEqual([
      expect.objectContaining({
        msg: 'graphql operation',
        operation: body.operationName,
        type: 'query',
        user: alice.userId,
      }),
    ]);
  });

  // Yoga answers a JSON body labelled `Content-Type: Application/JSON` with 415: once the
  // document is learned, the same request must not start to succeed on the prepared path.
  it('answers a differently spelled JSON content type as Yoga does', async () => {
    const body = fresh(DOCUMENTS.me);
    const odd = { headers: { 'content-type': 'Application/JSON' } };
    const yoga = await post(body, odd);
    await post(body); // learned through a plain application/json request
    expect(visible(await post(body, odd))).toEqual(visible(yoga));
  });

  // `operationName: ""` names no operation: Yoga refuses it, and learning the same text sent
  // without a name must not turn that refusal into data.
  it('refuses an empty operationName as Yoga does, before and after the document is learned', async () => {
    const body = { ...fresh(DOCUMENTS.me), operationName: '' };
    const before = await post(body);
    expect(before.status).toBe(400);
    await yogaThenPrepared({ query: body.query });
    const after = await pathsDuring(() => post(body));
    expect(after.took.prepared).toBe(0);
    expect(visible(after.result)).toEqual(visible(before));
  });

  // A stored value that cannot be serialised (a timestamp past JavaScript's Date range) is an
  // unexpected error on both paths: masked as INTERNAL_SERVER_ERROR, never its raw message.
  it('masks a value that fails to serialise as Yoga does', async () => {
    const owner = await server.createUser();
    const nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, owner.token)).data!.createNode
      .id;
    await adminQuery(
      `UPDATE proxmox_nodes SET last_tested_at = '294000-01-01Z' WHERE id = $1`,
      [nodeId],
      new URL(server.databaseUrl).pathname.slice(1),
    );
    const body = fresh((name) => ({
      query: `query ${name}($n: ID!) { node(id: $n) { id lastTestedAt } }`,
      variables: { n: nodeId },
    }));
    const [yoga, prepared] = await yogaThenPrepared(body, { token: owner.token });
    expect(JSON.parse(yoga.body).errors).toEqual([
      { message: 'Unexpected error.', path: ['node', 'lastTestedAt'], extensions: { code: 'INTERNAL_SERVER_ERROR' } },
    ]);
    expect(visible(prepared)).toEqual(visible(yoga));
  });
});

// PostgreSQL unreachable and the token not cached: a learned document is answered exactly as
// Yoga answers a never-seen one (masked JSON, Yoga's status), not with a bare 500.
describe.skipIf(!fastPathsOn)('prepared-query path while PostgreSQL is unreachable', () => {
  it('hands a request whose token cannot be checked to Yoga', async () => {
    const target = new URL(TEST_POSTGRES_URL);
    const [db, relay] = await Promise.all([
      createTestDatabase(),
      startTcpProxy(target.hostname, Number(target.port || 5432)),
    ]);
    const viaRelay = new URL(db.url);
    viaRelay.host = `127.0.0.1:${relay.port}`;
    const srv = await startTestServer({ databaseUrl: viaRelay.toString(), env: { TOKEN_CACHE_TTL_MS: '0' } });
    try {
      const { token } = await srv.createUser();
      const send = async (query: string) => {
        const res = await fetch(srv.graphqlUrl, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          body: JSON.stringify({ query }),
        });
        return { status: res.status, contentType: res.headers.get('content-type'), body: await res.text() };
      };
      const authErrors = async () =>
        metricValue(
          await (await fetch(`${srv.url}/metrics`)).text(),
          'pvegraph_graphql_prepared_requests_total{path="auth_error"}',
        );
      const learned = '{ learned: me { id } }';
      await send(learned);
      expect(JSON.parse((await send(learned)).body).data.learned.id).toBeTruthy();

      await relay.down();
      const yoga = await send('{ unseen: me { id } }');
      expect(yoga.contentType).toMatch(/^application\/json/);
      expect(JSON.parse(yoga.body).errors[0].extensions.code).toBe('SERVICE_UNAVAILABLE');
      const before = await authErrors();
      expect(await send(learned)).toEqual(yoga);
      expect(await authErrors()).toBe(before + 1);
    } finally {
      await srv.stop();
      await relay.close();
      await db.drop();
    }
  });
});
