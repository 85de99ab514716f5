import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { budgetKeyOf } from '../../src/http/client-address.js';
import { metricValue, startTestServer, type TestServer } from '../support/test-server.js';

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

async function post(server: TestServer, { token, query = unseenQuery(), headers = {} }: { token?: string; query?: string; headers?: Record<string, string> } = {}): Promise<Answer> {
  const res = await fetch(server.graphqlUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}), ...headers },
    body: JSON.stringify({ query }),
  });
  return { status: res.status, headers: res.headers, body: (await res.json()) as Answer['body'] };
}

const codeOf = (a: Answer) => a.body.errors?.[0]?.extensions?.code;
const BAD_TOKEN = `pvg_${'Z'.repeat(43)}`;

describe('per-address budget for requests without a valid token', () => {
  let a: TestServer;
  let b: TestServer;

  beforeAll(async () => {
    const env = { RATE_LIMIT_ANONYMOUS_PER_MIN: '3' };
    a = await startTestServer({ env });
    // Instance B: same database, same Redis key prefix — one deployment, one budget.
    b = await startTestServer({ env, databaseUrl: a.databaseUrl, redisKeyPrefix: a.config.redisKeyPrefix });
  });
  afterAll(async () => {
    await b.stop();
    await a.stop();
  });

  it('answers 401 within the budget and 429 RATE_LIMITED past it, on every instance', async () => {
    const alice = await a.createUser();
    // A document the server knows (it ran once with a valid token): refused on the prepared
    // path for a bad token at less than a valid read's cost, so it is never counted.
    const known = 'query KnownToServer { me { id } }';
    expect((await post(a, { token: alice.token, query: known })).status).toBe(200);
    for (let i = 0; i < 5; i++) expect(codeOf(await post(a, { token: BAD_TOKEN, query: known }))).toBe('UNAUTHENTICATED');

    expect(codeOf(await post(a))).toBe('UNAUTHENTICATED'); // 1, no token
    expect(codeOf(await post(b, { token: BAD_TOKEN }))).toBe('UNAUTHENTICATED'); // 2, unknown token
    expect(codeOf(await post(a, { query: '{ __typename }' }))).toBeUndefined(); // 3, introspection passes without a token

    const refusedBefore = await metricValue(a, 'pvegraph_anonymous_requests_total{outcome="refused"}');
    const limited = await post(a, { token: BAD_TOKEN, headers: { origin: 'https://dash.example', accept: 'application/graphql-response+json' } });
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
    expect(await metricValue(a, 'pvegraph_anonymous_requests_total{outcome="refused"}')).toBe(refusedBefore + 1);

    // The other instance counts in the same budget, and refuses introspection too.
    expect(codeOf(await post(b, { query: '{ __typename }' }))).toBe('RATE_LIMITED');
    // GraphiQL's page without a token is such a request as well.
    expect((await fetch(a.graphqlUrl, { headers: { accept: 'text/html' } })).status).toBe(429);

    // A user's requests are theirs, never the address's: a new document with a valid token
    // runs, and so does the known one; a bad token on a known document is still told 401.
    expect(await post(b, { token: alice.token })).toMatchObject({ status: 200, body: { data: { me: { id: alice.userId } } } });
    expect((await post(a, { token: alice.token, query: known })).status).toBe(200);
    expect(codeOf(await post(a, { token: BAD_TOKEN, query: known }))).toBe('UNAUTHENTICATED');
  });

  it('lets CORS preflights through (a browser sends them before its authenticated requests)', async () => {
    const fresh = await startTestServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1' } });
    try {
      for (let i = 0; i < 3; i++) {
        const preflight = await fetch(fresh.graphqlUrl, {
          method: 'OPTIONS',
          headers: { origin: 'https://dash.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization,content-type' },
        });
        expect(preflight.status).toBe(204);
      }
      expect(codeOf(await post(fresh))).toBe('UNAUTHENTICATED'); // the budget is still whole
      expect(codeOf(await post(fresh))).toBe('RATE_LIMITED');
    } finally {
      await fresh.stop();
    }
  });
});

describe('which address pays', () => {
  it('ignores X-Forwarded-For unless the peer is a trusted proxy', async () => {
    const server = await startTestServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1' } });
    try {
      expect(codeOf(await post(server, { headers: { 'x-forwarded-for': '203.0.113.1' } }))).toBe('UNAUTHENTICATED');
      // A client cannot buy a new budget by writing the header.
      expect(codeOf(await post(server, { headers: { 'x-forwarded-for': '203.0.113.2' } }))).toBe('RATE_LIMITED');
    } finally {
      await server.stop();
    }
  });

  it('behind a trusted proxy, counts the forwarded client: per IPv4 address, per IPv6 /64', async () => {
    const server = await startTestServer({ env: { RATE_LIMIT_ANONYMOUS_PER_MIN: '1', TRUST_PROXY: 'loopback' } });
    const from = (xff: string) => post(server, { headers: { 'x-forwarded-for': xff } });
    try {
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
    } finally {
      await server.stop();
    }
  });

  it('keys IPv4 by address and IPv6 by /64', () => {
    expect(budgetKeyOf('192.0.2.1')).toBe('192.0.2.1');
    expect(budgetKeyOf('::ffff:192.0.2.1')).toBe('192.0.2.1');
    expect(budgetKeyOf('2001:db8:0:a::1')).toBe('2001:db8:0:a::/64');
    expect(budgetKeyOf('2001:0db8:0000:000a:ffff:ffff:ffff:ffff')).toBe('2001:db8:0:a::/64');
    expect(budgetKeyOf('::1')).toBe('0:0:0:0::/64');
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
    expect(() => loadConfig({ TRUST_PROXY: 'loopback, proxy.example' })).toThrow(/TRUST_PROXY: invalid IP address: proxy\.example/);
    expect(loadConfig({ TRUST_PROXY: ' 10.0.0.0/8 , loopback,2001:db8::/32' }).trustProxy).toEqual(['10.0.0.0/8', 'loopback', '2001:db8::/32']);
    expect(loadConfig({}).trustProxy).toEqual([]);
    expect(loadConfig({}).rateLimits.anonymousRequestsPerMin).toBe(120);
  });
});
