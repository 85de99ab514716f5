import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Client, createClient } from 'graphql-ws';
import WebSocket from 'ws';
import { graphql } from '../gql/index.js';
import { TEST_REDIS_URL } from '../support/env.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { metricValue, startTestServer, type TestServer } from '../support/test-server.js';

const Me = graphql(`
  query Me {
    me {
      id
      name
    }
  }
`);

describe('API token authentication', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ env: { TOKEN_CACHE_TTL_MS: '1500' } });
  });
  afterAll(() => server.stop());

  it('answers me for the owner of a valid token', async () => {
    const alice = await server.createUser('alice');
    const res = await server.gql(Me, {}, alice.token);
    expect(res.errors).toBeUndefined();
    expect(res.data?.me).toEqual({ id: alice.userId, name: 'alice' });
  });

  it('answers UNAUTHENTICATED (401) for a wrong, a malformed and a missing token', async () => {
    const wrong = await server.gql(Me, {}, 'pvg_' + 'A'.repeat(43));
    const malformed = await server.gql(Me, {}, 'not-a-token');
    const missing = await server.gql(Me, {});
    for (const res of [wrong, malformed, missing]) {
      expect(res.status).toBe(401);
      expect(res.data ?? null).toBeNull();
      expect(res.errors?.[0]?.extensions?.code).toBe('UNAUTHENTICATED');
    }
    expect(wrong.errors?.[0]?.message).toMatch(/not valid/);
    expect(missing.errors?.[0]?.message).toMatch(/required/);
  });

  it('lets introspection through without a token, so GraphiQL can load the schema', async () => {
    const res = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ query: '{ __schema { queryType { name } } }' }),
    });
    expect(await res.json()).toEqual({ data: { __schema: { queryType: { name: 'Query' } } } });
  });

  it('trusts a verified token without the database until the cache lifetime, then sees its revocation', async () => {
    const bob = await server.createUser('bob');
    expect((await server.gql(Me, {}, bob.token)).data?.me?.name).toBe('bob');
    const tokens = await server.runtime.services.auth.listTokens('bob');
    expect(await server.runtime.services.auth.revokeToken(tokens[0]!.id)).toBe(1);

    // Still served from the in-process cache: no database round trip saw the revocation.
    expect((await server.gql(Me, {}, bob.token)).data?.me?.name).toBe('bob');

    const revokedAt = Date.now();
    let code: unknown;
    while (Date.now() - revokedAt < 5_000) {
      code = (await server.gql(Me, {}, bob.token)).errors?.[0]?.extensions?.code;
      if (code) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(code).toBe('UNAUTHENTICATED');
    // Within the configured lifetime (1.5 s) plus scheduling slack.
    expect(Date.now() - revokedAt).toBeLessThan(3_000);
  });

  it('records when a token was last used', async () => {
    const carol = await server.createUser('carol');
    await server.gql(Me, {}, carol.token);
    await expect
      .poll(async () => (await server.runtime.services.auth.listTokens('carol'))[0]?.lastUsedAt ?? null)
      .not.toBeNull();
  });

  it('closes a WebSocket with 4403 when its token is bad or missing, and serves a good one', async () => {
    const closeCode = (authorization?: string) =>
      new Promise<number>((resolve) => {
        const client: Client = createClient({
          url: server.wsUrl,
          webSocketImpl: WebSocket,
          retryAttempts: 0,
          lazy: false,
          connectionParams: authorization ? { authorization } : {},
          on: { closed: (event) => resolve((event as { code: number }).code) },
          onNonLazyError: () => undefined,
        });
        setTimeout(() => void client.dispose(), 5_000);
      });
    expect(await closeCode('Bearer pvg_' + 'B'.repeat(43))).toBe(4403);
    expect(await closeCode()).toBe(4403);

    const dave = await server.createUser('dave');
    const client = createClient({
      url: server.wsUrl,
      webSocketImpl: WebSocket,
      retryAttempts: 0,
      connectionParams: { authorization: `Bearer ${dave.token}` },
    });
    try {
      const result = await new Promise<unknown>((resolve, reject) => {
        client.subscribe({ query: '{ me { name } }' }, { next: resolve, error: reject, complete: () => undefined });
      });
      expect(result).toEqual({ data: { me: { name: 'dave' } } });
    } finally {
      await client.dispose();
    }
  });
});

describe('refused tokens', () => {
  let server: TestServer;
  // Only token lookups count: start-up work (identifying older registrations) runs its own
  // statements in the background and may land inside the measured window.
  let statements = 0;
  beforeAll(async () => {
    server = await startTestServer({ onQuery: (sql) => void (sql.includes('"api_tokens"') && statements++) });
  });
  afterAll(() => server.stop());

  it('cost one database query however often the same bad token is retried', async () => {
    const bad = 'pvg_' + 'Z'.repeat(43);
    statements = 0;
    expect((await server.gql(Me, {}, bad)).errors?.[0]?.extensions?.code).toBe('UNAUTHENTICATED');
    const firstLookup = statements; // the token row with its user
    expect(firstLookup).toBeGreaterThan(0);
    for (let i = 0; i < 19; i++)
      expect((await server.gql(Me, {}, bad)).errors?.[0]?.extensions?.code).toBe('UNAUTHENTICATED');
    expect(statements).toBe(firstLookup);
    // Malformed tokens never reach the database at all.
    for (let i = 0; i < 5; i++) await server.gql(Me, {}, 'garbage');
    expect(statements).toBe(firstLookup);
  });
});

describe('revoking a token with streams open', () => {
  let server: TestServer;
  beforeAll(async () => {
    server = await startTestServer({ env: { TOKEN_CACHE_TTL_MS: '1000' } });
  });
  afterAll(() => server.stop());

  it('closes the open sockets of a revoked token with 4403 within the token cache lifetime', async () => {
    const erin = await server.createUser('erin');
    // Two idle sockets of one token (the sweep checks the token once and closes both), and
    // one of another user that must stay open.
    const open = async (token: string) => {
      const socket = new WebSocket(server.wsUrl, 'graphql-transport-ws');
      const closed = new Promise<number>((resolve) => socket.once('close', (c) => resolve(c)));
      await new Promise<void>((resolve) => {
        socket.once('open', () =>
          socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } })),
        );
        socket.on('message', (m) => JSON.parse(String(m)).type === 'connection_ack' && resolve());
      });
      return { socket, closed };
    };
    const frank = await server.createUser('frank');
    const [first, second, other] = await Promise.all([open(erin.token), open(erin.token), open(frank.token)]);
    const revokedBefore = await metricValue(server, 'pvegraph_revoked_connections_total{transport="websocket"}');
    const [token] = await server.runtime.services.auth.listTokens('erin');
    await server.runtime.services.auth.revokeToken(token!.id);
    const revokedAt = Date.now();
    expect(await Promise.all([first.closed, second.closed])).toEqual([4403, 4403]);
    expect(Date.now() - revokedAt).toBeLessThan(5_000);
    expect(other.socket.readyState).toBe(WebSocket.OPEN);
    // Counted, so an operator can see the revocation take effect.
    expect(
      (await metricValue(server, 'pvegraph_revoked_connections_total{transport="websocket"}')) - (revokedBefore || 0),
    ).toBe(2);
    other.socket.close();
  });

  // An SSE subscription was authenticated once, by its request: it must not stream for a
  // revoked token either. Its last event says why (UNAUTHENTICATED), then it completes.
  it('ends the SSE subscriptions of a revoked token with UNAUTHENTICATED, then complete', async () => {
    const gina = await server.createUser('gina');
    const hugo = await server.createUser('hugo');
    const activeBefore = await activeSubscriptions();
    const [first, second, other] = await Promise.all([openSse(gina.token), openSse(gina.token), openSse(hugo.token)]);
    await expect.poll(activeSubscriptions).toBe(activeBefore + 3);
    const revokedBefore = (await metricValue(server, 'pvegraph_revoked_connections_total{transport="sse"}')) || 0;

    const [token] = await server.runtime.services.auth.listTokens('gina');
    await server.runtime.services.auth.revokeToken(token!.id);
    const revokedAt = Date.now();
    await expect.poll(() => first.closed && second.closed, { timeout: 5_000 }).toBe(true);
    for (const stream of [first, second]) {
      expect(await stream.events).toEqual([
        {
          event: 'next',
          data: { errors: [{ message: 'The API token has been revoked.', extensions: { code: 'UNAUTHENTICATED' } }] },
        },
        { event: 'complete', data: null },
      ]);
    }
    expect(Date.now() - revokedAt).toBeLessThan(5_000);
    // The subscriptions are gone on the server too (gauge, per-user slots, Redis listeners).
    await expect.poll(activeSubscriptions).toBe(activeBefore + 1);
    expect((await metricValue(server, 'pvegraph_revoked_connections_total{transport="sse"}')) - revokedBefore).toBe(2);
    expect(other.closed).toBe(false);
    other.abort();
    await expect.poll(activeSubscriptions).toBe(activeBefore);
  });

  /** Subscriptions streaming on the server (its gauge). */
  const activeSubscriptions = () => metricValue(server, 'pvegraph_active_subscriptions');

  /** A `vmidEvents` subscription over SSE (no nodes: it streams nothing until it ends). */
  async function openSse(token: string) {
    const ac = new AbortController();
    const res = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'text/event-stream', authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: 'subscription { vmidEvents { kind } }' }),
      signal: ac.signal,
    });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    let text = '';
    const state = { closed: false };
    /** Every event (pings left out), once the server has ended the response. */
    const events = (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += decoder.decode(value, { stream: true });
      }
      state.closed = true;
      return text
        .split('\n\n')
        .filter((chunk) => chunk.startsWith('event:'))
        .map((chunk) => {
          const [event, data] = chunk.split('\n');
          const json = data!.slice('data:'.length).trim();
          return { event: event!.slice('event:'.length).trim(), data: json ? (JSON.parse(json) as unknown) : null };
        });
    })();
    events.catch(() => undefined); // the aborted one
    return {
      events,
      abort: () => ac.abort(),
      get closed() {
        return state.closed;
      },
    };
  }
});

describe('health endpoints', () => {
  let server: TestServer;
  let redisRelay: TcpProxy;
  beforeAll(async () => {
    const redisUrl = new URL(TEST_REDIS_URL);
    redisRelay = await startTcpProxy(redisUrl.hostname, Number(redisUrl.port || 6379));
    server = await startTestServer({ env: { REDIS_URL: redisRelay.url('redis') } });
  });
  afterAll(async () => {
    await server.stop();
    await redisRelay.close();
  });

  it('reports the process up and its dependencies ready', async () => {
    const health = await fetch(`${server.url}/healthz`);
    expect(health.status).toBe(200);
    const ready = await fetch(`${server.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toEqual({ ready: true, checks: { database: 'ok', redis: 'ok' } });
  });

  it('answers 503 from /readyz while Redis is unreachable and 200 once it is back, without a restart', async () => {
    await redisRelay.down();
    const down = await fetch(`${server.url}/readyz`);
    expect(down.status).toBe(503);
    // ioredis keeps reconnecting by itself: /readyz says so.
    expect(await down.json()).toEqual({ ready: false, checks: { database: 'ok', redis: 'reconnecting' } });
    // Liveness is not readiness: the process itself is fine.
    expect((await fetch(`${server.url}/healthz`)).status).toBe(200);

    await redisRelay.up();
    await expect.poll(async () => (await fetch(`${server.url}/readyz`)).status, { timeout: 10_000 }).toBe(200);
  });
});
