import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getIntrospectionQuery } from 'graphql';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { QUERY_LIMITS } from '../../src/api/yoga.js';
import { startTestServer, type TestServer } from '../support/test-server.js';

async function post(server: TestServer, query: string, token?: string, headers: Record<string, string> = {}) {
  const res = await fetch(server.graphqlUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
    body: JSON.stringify({ query }),
  });
  return {
    status: res.status,
    body: (await res.json()) as { data?: unknown; errors?: Array<{ message: string; extensions?: { code?: string } }> },
  };
}

/** me { nodes { containers { node { containers { node … } } } } } nested `levels` deep. */
function deepQuery(levels: number): string {
  let inner = 'id';
  for (let i = 0; i < levels; i++) inner = i % 2 === 0 ? `containers { ${inner} }` : `node { ${inner} }`;
  return `{ me { nodes { ${inner} } } }`;
}

describe('query limits (HTTP and WebSocket)', () => {
  let server: TestServer;
  let token: string;
  beforeAll(async () => {
    server = await startTestServer();
    token = (await server.createUser()).token;
  });
  afterAll(() => server.stop());

  it('accepts a realistic dashboard query', async () => {
    const res = await post(server, '{ me { nodes { id name containers { id vmid node { id } } } } }', token);
    expect(res.body.errors).toBeUndefined();
  });

  it.each([
    ['depth', deepQuery(QUERY_LIMITS.maxDepth + 2), /depth/i],
    [
      'aliases',
      `{ ${Array.from({ length: QUERY_LIMITS.maxAliases + 1 }, (_, i) => `a${i}: me { id }`).join(' ')} }`,
      /alias/i,
    ],
    ['directives', `{ me { id ${'@include(if: true) '.repeat(QUERY_LIMITS.maxDirectives + 1)} } }`, /directive/i],
    ['tokens', `{ me { ${'id '.repeat(QUERY_LIMITS.maxTokens)} } }`, /token/i],
  ])('refuses a document over the %s limit before executing it', async (_limit, query, message) => {
    const res = await post(server, query, token);
    expect(res.body.data ?? null).toBeNull();
    expect(res.body.errors?.[0]?.message).toMatch(message);
    // The token and depth limits run while parsing, the others while validating.
    expect(res.body.errors?.[0]?.extensions?.code).toMatch(/^GRAPHQL_(PARSE|VALIDATION)_FAILED$/);
  });

  /** A valid chain me → nodes → containers → node → … of `levels` fields below nodes. */
  const validDeepQuery = (levels: number, leaf = 'id') => {
    let inner = leaf;
    for (let i = levels - 1; i >= 0; i--) inner = i % 2 === 0 ? `containers { ${inner} }` : `node { ${inner} }`;
    return `{ me { nodes { ${inner} } } }`;
  };
  const graphqlResponse = { accept: 'application/graphql-response+json' };

  // GraphQL over HTTP: a document that fails validation is answered 400 to clients that accept
  // application/graphql-response+json (200 stays for application/json). Sent twice: the second
  // time a document the server had learned would take the prepared path. The token limit stops
  // the parser: told like the others, without "Syntax Error:" (nothing was malformed).
  it.each([
    ['maxTokens', `{ me { ${'id '.repeat(QUERY_LIMITS.maxTokens)} } }`, /^Token limit of 2000 exceeded\.$/],
    ['maxDepth', validDeepQuery(QUERY_LIMITS.maxDepth - 1), /^Query depth limit of 10 exceeded, found 12\.$/],
    [
      'maxAliases',
      `{ ${Array.from({ length: QUERY_LIMITS.maxAliases + 1 }, (_, i) => `a${i}: me { id }`).join(' ')} }`,
      /^Aliases limit of 15 exceeded, found 16\.$/,
    ],
    [
      'maxDirectives',
      `{ me { ${'id @include(if: true) '.repeat(QUERY_LIMITS.maxDirectives + 1)} } }`,
      /^Directives limit of 20 exceeded, found 21\.$/,
    ],
    // Depth 10 exactly, but 300 fields at the bottom.
    [
      'maxCost',
      validDeepQuery(QUERY_LIMITS.maxDepth - 3, 'id '.repeat(300)),
      /^Query Cost limit of 5000 exceeded, found [\d.]+\.$/,
    ],
  ])(
    'answers a document over %s 400 with application/graphql-response+json, 200 with application/json, naming the limit',
    async (limit, query, message) => {
      for (let i = 0; i < 2; i++) {
        for (const [headers, status] of [
          [graphqlResponse, 400],
          [{ accept: 'application/json' }, 200],
        ] as const) {
          const res = await post(server, query, token, headers);
          expect(res.status).toBe(status);
          expect(res.body.data ?? null).toBeNull();
          expect(res.body.errors).toHaveLength(1);
          expect(res.body.errors?.[0]).toEqual({
            message: expect.stringMatching(message),
            extensions: { code: limit === 'maxTokens' ? 'GRAPHQL_PARSE_FAILED' : 'GRAPHQL_VALIDATION_FAILED', limit },
          });
        }
      }
    },
  );

  it('tells a too-deep document as a depth overrun only (its cost is over the limit too)', async () => {
    const res = await post(server, validDeepQuery(41), token, graphqlResponse);
    expect(res.status).toBe(400);
    expect(res.body.errors).toEqual([
      {
        message: 'Query depth limit of 10 exceeded, found 44.',
        extensions: { code: 'GRAPHQL_VALIDATION_FAILED', limit: 'maxDepth' },
      },
    ]);
  });

  it('applies the depth limit to introspection, except to the standard introspection query GraphiQL sends', async () => {
    const abuse = `{ __schema { types { fields { type ${'{ ofType '.repeat(9)}{ name }${' }'.repeat(9)} } } } }`;
    for (const auth of [token, undefined]) {
      const refused = await post(server, abuse, auth, graphqlResponse);
      expect(refused.status).toBe(400);
      expect(refused.body.errors?.[0]?.extensions).toEqual({ code: 'GRAPHQL_VALIDATION_FAILED', limit: 'maxDepth' });
    }
    // What GraphiQL 5 sends (its options, and its retry without subscriptionType).
    for (const inputValueDeprecation of [false, true]) {
      for (const schemaDescription of [false, true]) {
        const query = getIntrospectionQuery({ inputValueDeprecation, schemaDescription });
        for (const text of [query, query.replace('subscriptionType { name }', '')]) {
          const res = await post(server, text, undefined, graphqlResponse);
          expect(res.status).toBe(200);
          expect(res.body.errors).toBeUndefined();
          expect(res.body.data).toMatchObject({ __schema: { queryType: { name: 'Query' } } });
        }
      }
    }
    // Only that query: one more level of type references, or another name, is over the limit.
    const standard = getIntrospectionQuery();
    for (const variant of [
      getIntrospectionQuery({ typeDepth: 10 }),
      standard.replace('query IntrospectionQuery', 'query Schema'),
    ]) {
      const res = await post(server, variant, undefined, graphqlResponse);
      expect(res.status).toBe(400);
      expect(res.body.errors?.[0]?.extensions).toEqual({ code: 'GRAPHQL_VALIDATION_FAILED', limit: 'maxDepth' });
    }
  });

  it('applies the same limits to WebSocket operations', async () => {
    const client = createClient({
      url: server.wsUrl,
      webSocketImpl: WebSocket,
      retryAttempts: 0,
      connectionParams: { authorization: `Bearer ${token}` },
    });
    try {
      const outcome = await new Promise<unknown>((resolve) => {
        client.subscribe(
          { query: deepQuery(QUERY_LIMITS.maxDepth + 2) },
          { next: resolve, error: resolve, complete: () => undefined },
        );
      });
      expect(JSON.stringify(outcome)).toMatch(/depth/i);
    } finally {
      await client.dispose();
    }
  });

  it('refuses a request body over MAX_REQUEST_BODY_BYTES with 413', async () => {
    const res = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({
        query: '{ me { id } }',
        variables: { pad: 'x'.repeat(server.config.maxRequestBodyBytes + 1) },
      }),
    });
    expect(res.status).toBe(413);
  });

  it('blocks requests a browser could send cross-site without a preflight (CSRF)', async () => {
    const simpleGet = await fetch(`${server.graphqlUrl}?query=${encodeURIComponent('{ __typename }')}`);
    expect(simpleGet.status).toBe(403);
    const form = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: 'query={__typename}',
    });
    expect(form.status).toBe(403);
    // With a header only a preflighted request can carry, GET works.
    const preflighted = await fetch(`${server.graphqlUrl}?query=${encodeURIComponent('{ me { name } }')}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(preflighted.status).toBe(200);
  });

  it('echoes a request id and exposes Prometheus metrics', async () => {
    const res = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': 'req-123' },
      body: JSON.stringify({ query: '{ me { id } }' }),
    });
    expect(res.headers.get('x-request-id')).toBe('req-123');
    const metrics = await (await fetch(`${server.url}/metrics`)).text();
    expect(metrics).toMatch(/pvegraph_graphql_errors_total\{code="UNAUTHENTICATED"\} [1-9]/);
    expect(metrics).toMatch(/pvegraph_graphql_operation_duration_seconds_count\{type="query",outcome="ok"\} [1-9]/);
    expect(metrics).toMatch(/pvegraph_http_requests_total\{route="\/graphql",status="2xx"\} [1-9]/);
    expect(metrics).toContain('pvegraph_active_subscriptions');
  });
});

describe('production mode', () => {
  let server: TestServer;
  let token: string;
  beforeAll(async () => {
    server = await startTestServer({ env: { NODE_ENV: 'production', METRICS_TOKEN: 'scrape-me' } });
    token = (await server.createUser()).token;
  });
  afterAll(() => server.stop());

  it('turns introspection and GraphiQL off and hides field suggestions', async () => {
    const intro = await post(server, '{ __schema { queryType { name } } }', token);
    expect(intro.body.errors?.[0]?.message).toMatch(/introspection/i);
    const page = await fetch(server.graphqlUrl, { headers: { accept: 'text/html' } });
    expect(await page.text()).not.toMatch(/<html/i);
    const typo = await post(server, '{ me { nam } }', token);
    expect(typo.body.errors?.[0]?.message).toMatch(/Cannot query field/);
    expect(typo.body.errors?.[0]?.message).not.toMatch(/Did you mean/);
  });

  it('requires the metrics token for /metrics when one is set', async () => {
    expect((await fetch(`${server.url}/metrics`)).status).toBe(401);
    expect((await fetch(`${server.url}/metrics`, { headers: { authorization: 'Bearer scrape-me' } })).status).toBe(200);
  });
});

describe('WebSocket connections per user', () => {
  let server: TestServer;
  beforeAll(async () => {
    // No token cache: every connection's check takes a database round trip, the window in
    // which a client can hang up before it finishes.
    server = await startTestServer({ env: { WS_MAX_CONNECTIONS_PER_USER: '2', TOKEN_CACHE_TTL_MS: '0' } });
  });
  afterAll(() => server.stop());

  it('closes connections over the cap with 1008, and frees a slot when one closes', async () => {
    const { token } = await server.createUser();
    const open = () =>
      new Promise<{ socket: WebSocket; closed: Promise<number> }>((resolve, reject) => {
        const socket = new WebSocket(server.wsUrl, 'graphql-transport-ws');
        const closed = new Promise<number>((r) => socket.once('close', (code) => r(code)));
        socket.once('error', reject);
        socket.once('open', () =>
          socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } })),
        );
        socket.on('message', (data) => {
          if (JSON.parse(String(data)).type === 'connection_ack') resolve({ socket, closed });
        });
        void closed.then(() => resolve({ socket, closed }));
      });
    const a = await open();
    const b = await open();
    const c = await open();
    expect(await c.closed).toBe(1008);
    a.socket.close();
    await a.closed;
    const d = await open();
    expect(d.socket.readyState).toBe(WebSocket.OPEN);
    b.socket.close();
    d.socket.close();
  });

  it('does not lose slots to clients that hang up while their token is being checked', async () => {
    const { token } = await server.createUser();
    await Promise.all(
      Array.from(
        { length: 20 },
        () =>
          new Promise<void>((resolve) => {
            const socket = new WebSocket(server.wsUrl, 'graphql-transport-ws');
            socket.once('open', () => {
              socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } }));
              socket.close();
            });
            socket.once('close', () => resolve());
            socket.once('error', () => resolve());
          }),
      ),
    );
    await new Promise((r) => setTimeout(r, 300));
    const acked = () =>
      new Promise<boolean>((resolve) => {
        const socket = new WebSocket(server.wsUrl, 'graphql-transport-ws');
        socket.once('open', () =>
          socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } })),
        );
        socket.on('message', (m) => {
          if (JSON.parse(String(m)).type === 'connection_ack') resolve(true);
        });
        socket.once('close', () => resolve(false));
        setTimeout(() => socket.close(), 2_000);
      });
    expect(await Promise.all([acked(), acked()])).toEqual([true, true]);
  });
});
