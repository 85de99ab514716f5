import http from 'node:http';
import { Redis } from 'ioredis';
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { budgetKeyOf, siteKeyOf } from '../../src/http/client-address.js';
import { TEST_POSTGRES_URL, TEST_REDIS_URL } from '../support/env.js';
import { FAST_PATHS_OFF, fastPathsOn } from '../support/fast-paths.js';
import { startTcpProxy } from '../support/tcp-proxy.js';
import { createTestDatabase } from '../support/test-database.js';
import { metricValue, startTestServer, type TestServer, type TestServerOptions } from '../support/test-server.js';

/**
 * Requests without a valid API token that Yoga has to parse get a budget per client address
 * (src/http/anonymous-budget.ts); past it they are answered 429 RATE_LIMITED before Yoga
 * reads them. Each server here has its own Redis prefix, so its budgets start full.
 */

let seq = 0;
/** A document no request of this file has sent (a scanner's, or a mistyped dashboard's). */
const unseenQuery = () => `query Probe${++seq} { me { id } }`;

interface Answer {
  status: number;
  headers: Headers;
  body: { data?: unknown; errors?: Array<{ message: string; extensions?: Record<string, unknown> }> };
}

async function post(
  server: TestServer,
  {
    token,
    query = unseenQuery(),
    headers = {},
  }: { token?: string; query?: string; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const res = await fetch(server.graphqlUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
    body: JSON.stringify({ query }),
  });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Answer['body'] };
}

const codeOf = (a: Answer) => a.body.errors?.[0]?.extensions?.code;

/** A server of its own for one test, stopped afterwards whatever happens. */
async function withServer(options: TestServerOptions, use: (server: TestServer) => Promise<void>): Promise<void> {
  const server = await startTestServer(options);
  try {
    await use(server);
  } finally {
    await server.stop();
  }
}
const BAD_TOKEN = `pvg_${'Z'.repeat(43)}`;

describe('per-address budget for requests without a valid token', () => {
  let a: TestServer;
  let b: TestServer;
  let redis: Redis;
  const tokenQueries: string[] = [];
  /** What the shared budget of 127.0.0.1 holds in Redis: points spent this minute. */
  const spentInRedis = async () => Number(await redis.get(`${a.config.redisKeyPrefix}rl:anonymous:127.0.0.1`));

  beforeAll(async () => {
    const env = { RATE_LIMIT_ANONYMOUS_PER_MIN: '4' };
    a = await startTestServer({ env, onQuery: (sql) => void (sql.includes('api_tokens') && tokenQueries.push(sql)) });
    // Instance B: same database, same Redis key prefix — one deployment, one budget.
    b = await startTestServer({ env, databaseUrl: a.databaseUrl, redisKeyPrefix: a.config.redisKeyPrefix });
    redis = new Redis(TEST_REDIS_URL);
  });
  afterAll(async () => {
    redis.disconnect();
    await b.stop();
    await a.stop();
  });

  it('charges what Yoga and the database do for nobody; 429 RATE_LIMITED past the budget, on every instance', async ({
    skip,
  }) => {
    // A known document with a bad token is refused on the prepared path uncharged; in Yoga it is charged.
    skip(!fastPathsOn, FAST_PATHS_OFF);
    const alice = await a.createUser();
    const bob = await a.createUser(); // his token is used for the first time from a spent address
    // A document the server knows (it ran once with a valid token): a bad token on it is
    // refused on the prepared path for less than a valid read costs. Only the first look-up
    // of the made-up token (a database query) is charged; its cached refusal is not.
    const known = 'query KnownToServer { me { id } }';
    expect((await post(a, { token: alice.token, query: known })).status).toBe(200);
    expect((await post(b, { token: alice.token, query: known })).status).toBe(200); // B has her token cached too
    const lookupsBefore = tokenQueries.length;
    for (let i = 0; i < 5; i++)
      expect(codeOf(await post(a, { token: BAD_TOKEN, query: known }))).toBe('UNAUTHENTICATED');
    expect(await spentInRedis()).toBe(1);
    expect(tokenQueries.length).toBe(lookupsBefore + 1); // looked up once, then its refusal is cached

    expect(codeOf(await post(a))).toBe('UNAUTHENTICATED'); // 2: no token, unknown document
    // 3: a token B has not looked up yet, on a document Yoga must parse: charged once, not twice.
    expect(codeOf(await post(b, { token: BAD_TOKEN }))).toBe('UNAUTHENTICATED');
    expect(await spentInRedis()).toBe(3);
    // 4: introspection still runs without a token (GraphiQL loads the schema first).
    expect(await post(a, { query: '{ __typename }' })).toMatchObject({
      status: 200,
      body: { data: { __typename: 'Query' } },
    });
    // A's charges: the made-up token's lookup, the tokenless request, the introspection.
    expect(await metricValue(a, 'pvegraph_anonymous_requests_total{outcome="charged"}')).toBe(3);

    const limited = await post(a, {
      token: BAD_TOKEN,
      headers: { origin: 'https://dash.example', accept: 'application/graphql-response+json' },
    });
    expect(limited.status).toBe(429);
    expect(limited.body.data).toBeUndefined();
    expect(codeOf(limited)).toBe('RATE_LIMITED');
    const retryAfter = limited.body.errors![0]!.extensions!.retryAfterSeconds as number;
    expect(retryAfter).toBeGreaterThan(0);
    expect(retryAfter).toBeLessThanOrEqual(60);
    expect(limited.headers.get('retry-after')).toBe(String(retryAfter));
    expect(limited.headers.get('content-type')).toBe('application/graphql-response+json; charset=utf-8');
    // A browser dashboard can read why it was refused.
    expect(limited.headers.get('access-control-allow-origin')).toBe('https://dash.example');
    expect(await metricValue(a, 'pvegraph_anonymous_requests_total{outcome="refused"}')).toBe(1);

    // A spent address is refused from memory: after its first refusal (counted in Redis), this
    // instance asks Redis no more...
    expect(await spentInRedis()).toBe(5);
    for (let i = 0; i < 3; i++) expect((await post(a)).status).toBe(429);
    expect(await spentInRedis()).toBe(5);
    // ...nor the database, for a made-up token it would have had to look up.
    const lookups = tokenQueries.length;
    expect((await post(a, { token: `pvg_${'Y'.repeat(43)}`, query: known })).status).toBe(429);
    expect(tokenQueries.length).toBe(lookups);

    // The other instance counts in the same budget, and refuses introspection too.
    expect(codeOf(await post(b, { query: '{ __typename }' }))).toBe('RATE_LIMITED');
    // GraphiQL's page (9 MB, self-contained) without a token is such a request as well.
    expect((await fetch(a.graphqlUrl, { headers: { accept: 'text/html' } })).status).toBe(429);

    // A user's requests are theirs, never the address's: a new document with a known valid
    // token runs, and so does the known one; a cached refusal on a known document is still 401.
    expect(await post(b, { token: alice.token })).toMatchObject({
      status: 200,
      body: { data: { me: { id: alice.userId } } },
    });
    expect((await post(a, { token: alice.token, query: known })).status).toBe(200);
    expect(codeOf(await post(a, { token: BAD_TOKEN, query: known }))).toBe('UNAUTHENTICATED');
    // The price: a token this instance has not looked up yet waits out the address's minute
    // too, since looking it up is what a flood of made-up tokens would cost.
    expect(codeOf(await post(a, { token: bob.token }))).toBe('RATE_LIMITED');
  });

  it('after a burst of made-up tokens spends the budget, looks none up any more', async () => {
    const lookups: string[] = [];
    const fresh = await startTestServer({
      env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '4' },
      onQuery: (sql) => void (sql.includes('api_tokens') && lookups.push(sql)),
    });
    const madeUp = (i: number) => `pvg_${String(i).padStart(43, 'Q')}`;
    try {
      const user = await fresh.createUser();
      const known = 'query KnownConcurrently { me { id } }';
      expect((await post(fresh, { token: user.token, query: known })).status).toBe(200);
      const burst = await Promise.all(
        Array.from({ length: 60 }, (_, i) => post(fresh, { token: madeUp(i), query: known })),
      );
      const statuses = burst.map((a) => a.status);
      expect(statuses.filter((s) => s === 401)).toHaveLength(4);
      expect(statuses.filter((s) => s === 429)).toHaveLength(56);
      lookups.length = 0;
      const after = await Promise.all(
        Array.from({ length: 20 }, (_, i) => post(fresh, { token: madeUp(100 + i), query: known })),
      );
      expect(after.map((a) => a.status)).toEqual(Array(20).fill(429));
      expect(lookups).toEqual([]);
    } finally {
      await fresh.stop();
    }
  });

  it('never charges valid tokens: a burst of dashboards reconnecting through one address is served', async () => {
    await withServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '2' } }, async (fresh) => {
      const users = await Promise.all(Array.from({ length: 10 }, () => fresh.createUser()));
      // None of these tokens has been checked by this instance: each is a database lookup.
      const answers = await Promise.all(users.map((u) => post(fresh, { token: u.token })));
      expect(answers.map((a) => a.status)).toEqual(Array(10).fill(200));
      expect(codeOf(await post(fresh))).toBe('UNAUTHENTICATED'); // the budget is untouched
      expect(codeOf(await post(fresh))).toBe('UNAUTHENTICATED');
      expect(codeOf(await post(fresh))).toBe('RATE_LIMITED');
    });
  });

  it('charges a WebSocket whose token only the database can tell about, and refuses it with 1013 (try again later) past the budget', async () => {
    const fresh = await startTestServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '2' } });
    let lastReason = '';
    const closeCodeOf = (token: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(fresh.wsUrl, 'graphql-transport-ws');
        ws.on('open', () =>
          ws.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } })),
        );
        ws.on('message', () => ws.close(1000));
        ws.on('close', (code, reason) => {
          lastReason = reason.toString();
          resolve(code);
        });
      });
    try {
      const user = await fresh.createUser();
      expect((await post(fresh, { token: user.token, query: '{ me { id } }' })).status).toBe(200); // checked: cached
      expect(await closeCodeOf(`pvg_${'W'.repeat(43)}`)).toBe(4403);
      expect(await closeCodeOf(`pvg_${'X'.repeat(43)}`)).toBe(4403);
      expect(await closeCodeOf(`pvg_${'V'.repeat(43)}`)).toBe(1013);
      expect(lastReason).toMatch(
        /^Too many requests without a valid API token from this address; try again in \d+ s\.$/,
      );
      // A valid token the server has checked before is never refused (acked, then closed by us).
      expect(await closeCodeOf(user.token)).toBe(1000);
    } finally {
      await fresh.stop();
    }
  });

  // graphql-ws's client gives up for good on its fatal close codes (4429 among them): a
  // dashboard behind a NAT whose budget ran out would never reconnect. 1013 it retries.
  it("a budget refusal is one graphql-ws's own client retries (default shouldRetry), and gets through once its token is one the server knows", async () => {
    await withServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1' } }, async (fresh) => {
      const user = await fresh.createUser();
      expect((await post(fresh, { token: user.token, query: '{ me { id } }' })).status).toBe(200); // checked: cached
      expect(codeOf(await post(fresh))).toBe('UNAUTHENTICATED'); // the address's one unit
      const closes: number[] = [];
      let attempts = 0;
      const client = createClient({
        url: fresh.wsUrl,
        webSocketImpl: WebSocket,
        retryAttempts: 3,
        retryWait: async () => undefined,
        // The first attempt with a token only the database could tell about (refused from
        // memory: the address is spent), the retries with the dashboard's valid one.
        connectionParams: () => ({
          authorization: `Bearer ${attempts++ === 0 ? `pvg_${'R'.repeat(43)}` : user.token}`,
        }),
        on: { closed: (event) => void closes.push((event as { code: number }).code) },
      });
      try {
        const result = await new Promise((resolve, reject) => {
          client.subscribe({ query: '{ me { id } }' }, { next: resolve, error: reject, complete: () => undefined });
        });
        expect(closes[0]).toBe(1013);
        expect(attempts).toBe(2);
        expect(result).toEqual({ data: { me: { id: user.userId } } });
      } finally {
        await client.dispose();
      }
    });
  });

  it('with the budget off, checks a token exactly once, in Yoga as before', async () => {
    const lookups: string[] = [];
    const off = await startTestServer({
      env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '0', TOKEN_CACHE_TTL_MS: '0' },
      onQuery: (sql) => void (sql.includes('api_tokens') && lookups.push(sql)),
    });
    try {
      const user = await off.createUser();
      lookups.length = 0;
      expect((await post(off, { token: user.token })).status).toBe(200); // a document Yoga parses
      expect(lookups.filter((q) => /^\s*SELECT/i.test(q))).toHaveLength(1);
      // A request Yoga refuses before any context (no CSRF header on a GET) looks nothing up.
      lookups.length = 0;
      expect(
        (
          await fetch(`${off.graphqlUrl}?query=${encodeURIComponent('{ me { id } }')}`, {
            headers: { authorization: `Bearer ${user.token}` },
          })
        ).status,
      ).toBe(200);
      expect((await fetch(`${off.url}/nowhere`, { headers: { authorization: `Bearer ${user.token}` } })).status).toBe(
        404,
      );
      expect(lookups.filter((q) => /^\s*SELECT/i.test(q))).toHaveLength(1);
    } finally {
      await off.stop();
    }
  });

  it('lets CORS preflights through (a browser sends them before its authenticated requests)', async () => {
    await withServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1' } }, async (fresh) => {
      for (let i = 0; i < 3; i++) {
        const preflight = await fetch(fresh.graphqlUrl, {
          method: 'OPTIONS',
          headers: {
            origin: 'https://dash.example',
            'access-control-request-method': 'POST',
            'access-control-request-headers': 'authorization,content-type',
          },
        });
        expect(preflight.status).toBe(204);
      }
      expect(codeOf(await post(fresh))).toBe('UNAUTHENTICATED'); // the budget is still whole
      expect(codeOf(await post(fresh))).toBe('RATE_LIMITED');
      // Spent, an address's preflights still pass: the dashboards behind it keep working.
      const preflight = await fetch(fresh.graphqlUrl, {
        method: 'OPTIONS',
        headers: { origin: 'https://dash.example', 'access-control-request-method': 'POST' },
      });
      expect(preflight.status).toBe(204);
    });
  });

  it('keeps the connection after a small refused body, closes it rather than read a large one', async () => {
    const fresh = await startTestServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1' } });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const send = (body: string) =>
      new Promise<{ status: number; connection: string | undefined; reused: boolean }>((resolve, reject) => {
        const req = http.request(
          fresh.graphqlUrl,
          {
            method: 'POST',
            agent,
            headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
          },
          (res) => {
            res.resume();
            res.on('end', () =>
              resolve({ status: res.statusCode!, connection: res.headers.connection, reused: req.reusedSocket }),
            );
          },
        );
        req.on('error', reject);
        req.end(body);
      });
    try {
      const small = JSON.stringify({ query: unseenQuery() });
      expect(await send(small)).toMatchObject({ status: 401, reused: false });
      expect(await send(small)).toMatchObject({ status: 429, connection: 'keep-alive', reused: true });
      expect(await send(small)).toMatchObject({ status: 429, reused: true }); // the same socket served it
      const large = JSON.stringify({ query: unseenQuery(), variables: { padding: 'x'.repeat(200_000) } });
      expect(await send(large)).toMatchObject({ status: 429, connection: 'close' });
      expect(await send(small)).toMatchObject({ status: 429, reused: false }); // a new connection
    } finally {
      agent.destroy();
      await fresh.stop();
    }
  });

  it('charges a request once when its token was looked up on the prepared path and Yoga then runs it', async ({
    skip,
  }) => {
    skip(!fastPathsOn, FAST_PATHS_OFF);
    await withServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '4' } }, async (server) => {
      const user = await server.createUser();
      // Introspection without a valid token runs (GraphiQL), but in Yoga, not the prepared path.
      const schemaProbe = 'query SchemaProbe { __typename }';
      expect((await post(server, { token: user.token, query: schemaProbe })).status).toBe(200); // now prepared
      const charged = () => metricValue(server, 'pvegraph_anonymous_requests_total{outcome="charged"}');
      // Handed over by the prepared path after its token check (not for an unknown document).
      const handedOverChecked = () =>
        metricValue(server, 'pvegraph_graphql_prepared_requests_total{path="unauthenticated"}');
      // The made-up token is looked up (charged) on the prepared path; Yoga runs the request
      // with that same check, without looking it up or charging it again.
      expect(await post(server, { token: BAD_TOKEN, query: schemaProbe })).toMatchObject({
        status: 200,
        body: { data: { __typename: 'Query' } },
      });
      expect([await charged(), await handedOverChecked()]).toEqual([1, 1]);
      // Its refusal is cached now: no lookup to charge, but Yoga's run is.
      expect((await post(server, { token: BAD_TOKEN, query: schemaProbe })).status).toBe(200);
      expect([await charged(), await handedOverChecked()]).toEqual([2, 2]);
    });
  });

  it('charges tokens that cannot be checked while PostgreSQL is unreachable', async () => {
    const target = new URL(TEST_POSTGRES_URL);
    const [db, relay] = await Promise.all([
      createTestDatabase(),
      startTcpProxy(target.hostname, Number(target.port || 5432)),
    ]);
    const viaRelay = new URL(db.url);
    viaRelay.host = `127.0.0.1:${relay.port}`;
    const srv = await startTestServer({
      databaseUrl: viaRelay.toString(),
      env: { TOKEN_CACHE_TTL_MS: '0', RATE_LIMIT_ANONYMOUS_PER_MIN: '2' },
    });
    try {
      await relay.down();
      // Each made-up token is a database attempt (seconds, while it is down): two, then 429.
      expect(codeOf(await post(srv, { token: `pvg_${'A'.repeat(43)}` }))).toBe('SERVICE_UNAVAILABLE');
      expect(codeOf(await post(srv, { token: `pvg_${'B'.repeat(43)}` }))).toBe('SERVICE_UNAVAILABLE');
      expect(codeOf(await post(srv, { token: `pvg_${'C'.repeat(43)}` }))).toBe('RATE_LIMITED');
    } finally {
      await srv.stop();
      await relay.close();
      await db.drop();
    }
  });
});

describe('which address pays', () => {
  it.each([
    ['unless the peer is a trusted proxy', {}],
    ['from a peer outside TRUST_PROXY', { TRUST_PROXY: '10.0.0.0/8' }],
  ])('ignores X-Forwarded-For %s', async (_, env) => {
    await withServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1', ...env } }, async (server) => {
      expect(codeOf(await post(server, { headers: { 'x-forwarded-for': '203.0.113.1' } }))).toBe('UNAUTHENTICATED');
      // A client cannot buy a new budget by writing the header.
      expect(codeOf(await post(server, { headers: { 'x-forwarded-for': '203.0.113.2' } }))).toBe('RATE_LIMITED');
    });
  });

  it('behind a trusted proxy, counts the forwarded client: per IPv4 address, per IPv6 /64', async () => {
    await withServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1', TRUST_PROXY: 'loopback' } }, async (server) => {
      const from = (xff: string) => post(server, { headers: { 'x-forwarded-for': xff } });
      expect(codeOf(await from('203.0.113.1'))).toBe('UNAUTHENTICATED');
      expect(codeOf(await from('203.0.113.1'))).toBe('RATE_LIMITED');
      expect(codeOf(await from('203.0.113.2'))).toBe('UNAUTHENTICATED');
      // The nearest untrusted hop pays, not whatever the client wrote further left.
      expect(codeOf(await from('198.51.100.9, 203.0.113.2'))).toBe('RATE_LIMITED');
      // An IPv4-mapped IPv6 address is the IPv4 address.
      expect(codeOf(await from('::ffff:203.0.113.1'))).toBe('RATE_LIMITED');

      expect(codeOf(await from('2001:db8:1:2::1'))).toBe('UNAUTHENTICATED');
      expect(codeOf(await from('2001:db8:1:2:ffff::7'))).toBe('RATE_LIMITED'); // same /64
      expect(codeOf(await from('2001:db8:1:3::1'))).toBe('UNAUTHENTICATED'); // next /64

      // A trusted hop written with a port is still a trusted hop: the client left of it pays.
      expect(codeOf(await from('203.0.113.9, 127.0.0.1:8443'))).toBe('UNAUTHENTICATED');
      expect(codeOf(await from('203.0.113.9'))).toBe('RATE_LIMITED');
      // Ports and brackets some proxies add do not make a new budget per source port.
      expect(codeOf(await from('203.0.113.3:1234'))).toBe('UNAUTHENTICATED');
      expect(codeOf(await from('203.0.113.3:5678'))).toBe('RATE_LIMITED');
      expect(codeOf(await from('[2001:db8:1:4::1]:443'))).toBe('UNAUTHENTICATED');
      expect(codeOf(await from('[2001:db8:1:4::1]:444'))).toBe('RATE_LIMITED');
      // What is not an address at all is charged to the proxy that sent it.
      expect(codeOf(await from('unknown'))).toBe('UNAUTHENTICATED');
      expect(codeOf(await from('garbage'))).toBe('RATE_LIMITED');
    });
  });

  it("gives an IPv6 /48 a budget of its own: 16 addresses' worth, however many /64s it spreads over", async () => {
    let tokenLookups = 0;
    const onQuery = (sql: string) => void (sql.includes('api_tokens') && tokenLookups++);
    await withServer(
      { env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1', TRUST_PROXY: 'loopback' }, onQuery },
      async (server) => {
        const from = (xff: string) => post(server, { headers: { 'x-forwarded-for': xff } });
        const messageOf = (a: Answer) => a.body.errors![0]!.message;
        // One /64 spending its own budget does not spend its neighbours': only its first request
        // reached the /48's budget.
        expect(codeOf(await from('2001:db8:7:0::1'))).toBe('UNAUTHENTICATED');
        for (let i = 0; i < 5; i++) expect(messageOf(await from('2001:db8:7:0::2'))).toMatch(/from this address;/);
        for (let i = 1; i < 16; i++)
          expect(codeOf(await from(`2001:db8:7:${i.toString(16)}::1`))).toBe('UNAUTHENTICATED');
        const refused = await from('2001:db8:7:ff::1'); // a 17th /64 of the same /48, unspent itself
        expect(codeOf(refused)).toBe('RATE_LIMITED');
        expect(messageOf(refused)).toMatch(/from this network \(IPv6 \/48\);/);
        expect(refused.headers.get('retry-after')).toMatch(/^\d+$/);
        // Refused from memory now, whichever /64 of it asks: a made-up token is not even looked up.
        expect(
          codeOf(await post(server, { token: BAD_TOKEN, headers: { 'x-forwarded-for': '2001:db8:7:100::1' } })),
        ).toBe('RATE_LIMITED');
        expect(tokenLookups).toBe(0);
        // (Positive control: the same token from elsewhere is looked up.)
        expect(codeOf(await post(server, { token: BAD_TOKEN, headers: { 'x-forwarded-for': '2001:db8:9::1' } }))).toBe(
          'UNAUTHENTICATED',
        );
        expect(tokenLookups).toBe(1);
        expect(codeOf(await from('2001:db8:8::1'))).toBe('UNAUTHENTICATED'); // another /48
        // IPv4 has no such budget: 17 addresses of one /24 are 17 budgets.
        for (let i = 1; i <= 17; i++) expect(codeOf(await from(`203.0.113.${i}`))).toBe('UNAUTHENTICATED');
      },
    );
  });

  it('keys IPv4 by address and IPv6 by /64, and a /64 to its /48', () => {
    expect(siteKeyOf(budgetKeyOf('2001:db8:0:a::1'))).toBe('2001:db8:0::/48');
    expect(siteKeyOf(budgetKeyOf('2001:db8:ab:cdef:1::1'))).toBe('2001:db8:ab::/48');
    expect(siteKeyOf(budgetKeyOf('::1'))).toBe('0:0:0::/48');
    expect(siteKeyOf(budgetKeyOf('fe80::1%eth0'))).toBe('fe80:0:0::/48');
    expect(siteKeyOf(budgetKeyOf('192.0.2.1'))).toBeNull();
    expect(siteKeyOf(budgetKeyOf('::ffff:192.0.2.1'))).toBeNull();
    expect(siteKeyOf(budgetKeyOf('garbage'))).toBeNull();
    expect(siteKeyOf('unknown')).toBeNull();
    expect(siteKeyOf('not:an:address::/64')).toBeNull();
    expect(budgetKeyOf('192.0.2.1')).toBe('192.0.2.1');
    expect(budgetKeyOf('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(budgetKeyOf('2001:db8:0:a::1')).toBe('2001:db8:0:a::/64');
    expect(budgetKeyOf('2001:0db8:0000:000a:ffff:ffff:ffff:ffff')).toBe('2001:db8:0:a::/64');
    expect(budgetKeyOf('::1')).toBe('0:0:0:0::/64');
    expect(budgetKeyOf('192.0.2.1:8080')).toBe('192.0.2.1');
    expect(budgetKeyOf('[2001:db8:0:a::1]:443')).toBe('2001:db8:0:a::/64');
    expect(budgetKeyOf('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
  });
});

describe('configuration', () => {
  it('turns the budget off with 0, and in-process counting works without Redis', async () => {
    const off = await startTestServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '0' } });
    const embedded = await startTestServer({ redis: false, env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '2' } });
    try {
      for (let i = 0; i < 5; i++) expect(codeOf(await post(off))).toBe('UNAUTHENTICATED');
      expect(codeOf(await post(embedded))).toBe('UNAUTHENTICATED');
      expect(codeOf(await post(embedded))).toBe('UNAUTHENTICATED');
      expect(codeOf(await post(embedded))).toBe('RATE_LIMITED');
    } finally {
      await off.stop();
      await embedded.stop();
    }
  });

  it('refuses a TRUST_PROXY entry that is not an address, a range or a known name', () => {
    expect(() => loadConfig({ TRUST_PROXY: 'loopback, proxy.example' })).toThrow(
      /TRUST_PROXY: invalid IP address: proxy\.example/,
    );
    expect(loadConfig({ TRUST_PROXY: ' 10.0.0.0/8 , loopback,2001:db8::/32' }).trustProxy).toEqual([
      '10.0.0.0/8',
      'loopback',
      '2001:db8::/32',
    ]);
    expect(loadConfig({}).trustProxy).toEqual([]);
    expect(loadConfig({}).rateLimits.anonymousRequestsPerMin).toBe(120);
  });
});
