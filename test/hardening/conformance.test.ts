import { type AuditResult, serverAudits } from 'graphql-http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../support/test-server.js';

/**
 * GraphQL over HTTP conformance (graphql-http's audits) against the real server. The audits
 * send introspection-only documents (`{ __typename }`, `__type(…)`), which the server lets
 * through without a token (so GraphiQL can load the schema); they are run both as an
 * anonymous client and as a client with a valid token, as a dashboard would send them.
 */

let server: TestServer;
let token: string;

beforeAll(async () => {
  server = await startTestServer();
  ({ token } = await server.createUser());
});
afterAll(async () => {
  await server?.stop();
});

function auditsFor(auth: 'anonymous' | 'token') {
  const fetchFn: typeof fetch = (input, init = {}) => {
    const headers = new Headers(init.headers);
    if (auth === 'token') headers.set('authorization', `Bearer ${token}`);
    return fetch(input, { ...init, headers });
  };
  // The url is read when an audit runs, so the list can be built before the server starts.
  return serverAudits({ url: () => server.graphqlUrl, fetchFn });
}

function describeFailure(result: AuditResult): string {
  return result.status === 'ok' ? '' : `${result.id} ${result.name}: ${result.reason}`;
}

describe.each(['anonymous', 'token'] as const)('GraphQL over HTTP audits (%s client)', (auth) => {
  const audits = auditsFor(auth);
  const must = audits.filter((a) => a.name.startsWith('MUST'));
  const optional = audits.filter((a) => !a.name.startsWith('MUST'));

  it('has MUST audits to run', () => {
    expect(must.length).toBeGreaterThan(10);
  });

  it.each(must.map((a) => [`${a.id} ${a.name}`, a] as const))('%s', async (_name, audit) => {
    const result = await audit.fn();
    expect(result.status, describeFailure(result)).toBe('ok');
  });

  /**
   * SHOULD/MAY audits are recommendations: they never fail the suite. The ones that do not
   * pass are printed as a markdown list (the README's "GraphQL over HTTP" section keeps it).
   */
  it('lists the SHOULD/MAY audits that do not pass', async () => {
    const results = await Promise.all(optional.map((a) => a.fn()));
    const notPassing = results.filter((r) => r.status !== 'ok');
    if (notPassing.length) {
      console.info(
        `SHOULD/MAY audits not passing (${auth} client):\n` +
          notPassing.map((r) => `- ${describeFailure(r)}`).join('\n'),
      );
    }
    expect(results).toHaveLength(optional.length);
  });
});

/** Every error answer of the GraphQL endpoint is a GraphQL error document in the negotiated media type. */
describe('error answers', () => {
  // With a token: without one, a POST a form could send is refused as CSRF first (403).
  const requests: Array<[string, number, RequestInit & { path?: string; withToken?: boolean }]> = [
    [
      'an unsupported content type',
      415,
      { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '{ me { id } }', withToken: true },
    ],
    ['no content type', 415, { method: 'POST', body: new Blob(['{"query":"{ me { id } }"}']), withToken: true }],
    [
      'a body that is not JSON',
      400,
      { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"query":' },
    ],
    ['no query', 400, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' }],
    [
      'a method other than GET and POST',
      405,
      { method: 'PUT', headers: { 'content-type': 'application/json' }, body: '{"query":"{ __typename }"}' },
    ],
    ['a GET without a preflight-only header (CSRF)', 403, { method: 'GET', path: '?query=%7B__typename%7D' }],
  ];
  it.each(
    requests.flatMap(([what, status, init]) =>
      ['application/graphql-response+json', 'application/json'].map((accept) => [what, accept, status, init] as const),
    ),
  )(
    '%s (Accept: %s) → %i with a GraphQL error document',
    async (_what, accept, status, { path = '', withToken, ...init }) => {
      const headers = new Headers(init.headers);
      headers.set('accept', accept);
      if (withToken) headers.set('authorization', `Bearer ${token}`);
      const res = await fetch(server.graphqlUrl + path, { ...init, headers });
      expect(res.status).toBe(status);
      expect(res.headers.get('content-type')).toBe(`${accept}; charset=utf-8`);
      const body = (await res.json()) as { errors?: Array<{ message?: unknown; extensions?: { code?: unknown } }> };
      expect(body.errors?.length).toBeGreaterThan(0);
      for (const error of body.errors ?? []) {
        expect(error.message).toEqual(expect.any(String));
        expect(error.extensions?.code).toEqual(expect.any(String));
      }
    },
  );

  it.each([
    'application/json, application/graphql-response+json',
    'application/graphql-response+json;q=0.9, application/json',
    '*/*',
    'text/html, */*;q=0.8',
  ])('a 415 answers in the media type Yoga picks for its own errors (Accept: %s)', async (accept) => {
    const headers = { accept, authorization: `Bearer ${token}` };
    const yoga = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'application/json' },
      body: '{}',
    });
    const ours = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { ...headers, 'content-type': 'text/plain' },
      body: '{ me { id } }',
    });
    expect([yoga.status, ours.status]).toEqual([400, 415]);
    expect(ours.headers.get('content-type')).toBe(yoga.headers.get('content-type'));
  });
});
