import { readFileSync } from 'node:fs';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';

/**
 * The graphql-transport-ws protocol as a raw client sees it: every protocol violation closes
 * the socket with the code the protocol names (graphql-ws PROTOCOL.md), and a good token
 * gets connection_ack and can run operations.
 */

const schemaSdl = readFileSync(new URL('../../schema/schema.graphql', import.meta.url), 'utf8');
/** vmidEvents lands with the VMID work; until then the 4409-with-a-subscription test skips. */
const schemaHasSubscription = /\btype Subscription\b[^}]*\bvmidEvents\b/s.test(schemaSdl);

let server: TestServer;
let sim: Simulator;
let token: string;
const sockets = new Set<WebSocket>();

beforeAll(async () => {
  [server, sim] = await Promise.all([startTestServer(), startTestSimulator()]);
  ({ token } = await server.createUser());
});
afterEach(() => {
  for (const s of sockets) s.terminate();
  sockets.clear();
  sim.clearFaults();
});
afterAll(async () => {
  await Promise.all([server?.stop(), sim?.stop()]);
});

interface Client {
  ws: WebSocket;
  openedAt: number;
  messages: Array<Record<string, unknown>>;
  closed: Promise<{ code: number; reason: string; afterMs: number }>;
  send(message: unknown): void;
  /** Resolves with the first message of that type (and id, when given). */
  next(type: string, id?: string): Promise<Record<string, unknown>>;
}

async function connect(): Promise<Client> {
  const ws = new WebSocket(server.wsUrl, 'graphql-transport-ws');
  sockets.add(ws);
  const messages: Array<Record<string, unknown>> = [];
  const waiters: Array<() => void> = [];
  let openedAt = 0;
  const closed = new Promise<{ code: number; reason: string; afterMs: number }>((resolve) => {
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString(), afterMs: Date.now() - openedAt }));
  });
  ws.on('message', (data) => {
    messages.push(JSON.parse(data.toString()) as Record<string, unknown>);
    for (const w of waiters.splice(0)) w();
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  openedAt = Date.now();
  expect(ws.protocol).toBe('graphql-transport-ws');
  const client: Client = {
    ws,
    openedAt,
    messages,
    closed,
    send: (message) => ws.send(typeof message === 'string' ? message : JSON.stringify(message)),
    next: (type, id) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const found = messages.find((m) => m.type === type && (id === undefined || m.id === id));
          if (found) return resolve(found);
          waiters.push(check);
        };
        void closed.then((c) => reject(new Error(`socket closed (${c.code} ${c.reason}) before a ${type} message`)));
        check();
      }),
  };
  return client;
}

async function acknowledged(): Promise<Client> {
  const client = await connect();
  client.send({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } });
  await client.next('connection_ack');
  return client;
}

describe('a good token', () => {
  it('gets connection_ack and can run { me { name } }', async () => {
    const { name, token: own } = await server.createUser();
    const client = await connect();
    client.send({ type: 'connection_init', payload: { authorization: `Bearer ${own}` } });
    await client.next('connection_ack');
    client.send({ id: 'me', type: 'subscribe', payload: { query: '{ me { name } }' } });
    const next = await client.next('next', 'me');
    expect(next.payload).toEqual({ data: { me: { name } } });
    await client.next('complete', 'me');
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
    client.ws.close(1000);
    expect((await client.closed).code).toBe(1000);
  });
});

describe('close codes', () => {
  it.each([
    ['an unknown message type', '{"type":"nonsense"}'],
    ['a message that is not JSON', 'this is { not json'],
    ['a subscribe without an id', '{"type":"subscribe","payload":{"query":"{ me { name } }"}}'],
    ['a subscribe whose payload is not an object', '{"id":"1","type":"subscribe","payload":"{ me { name } }"}'],
  ])('4400 on %s after the ack', async (_what, message) => {
    const client = await acknowledged();
    client.send(message);
    expect((await client.closed).code).toBe(4400);
  });

  it('4400 on an invalid message before connection_init', async () => {
    const client = await connect();
    client.send('{"type":"nonsense"}');
    expect((await client.closed).code).toBe(4400);
  });

  it('4401 on subscribe before connection_init', async () => {
    const client = await connect();
    client.send({ id: '1', type: 'subscribe', payload: { query: '{ me { name } }' } });
    const closed = await client.closed;
    expect(closed.code).toBe(4401);
    expect(client.messages.filter((m) => m.type === 'next')).toEqual([]);
  });

  it.each([
    ['no payload', undefined],
    ['an empty payload', {}],
    ['an unknown token', { authorization: 'Bearer pvg_' + 'x'.repeat(43) }],
    ['a token without "Bearer "', { authorization: 'TOKEN' }],
    ['a Basic credential', { authorization: 'Basic YWRtaW46YWRtaW4=' }],
    ['a non-string authorization', { authorization: { bearer: 'x' } }],
  ])('4403 on connection_init with %s', async (_what, payload) => {
    const client = await connect();
    client.send(payload === undefined ? { type: 'connection_init' } : { type: 'connection_init', payload });
    const closed = await client.closed;
    expect(closed.code).toBe(4403);
    expect(client.messages.filter((m) => m.type === 'connection_ack')).toEqual([]);
  });

  it('4408 when no connection_init arrives within the init timeout (3 s)', async () => {
    const client = await connect();
    const closed = await client.closed;
    expect(closed.code).toBe(4408);
    // graphql-ws's default connectionInitWaitTimeout is 3 s; allow for slow machines.
    expect(closed.afterMs).toBeGreaterThanOrEqual(2_500);
    expect(closed.afterMs).toBeLessThan(6_000);
  }, 10_000);

  it('4429 on a second connection_init after the ack', async () => {
    const client = await acknowledged();
    client.send({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } });
    expect((await client.closed).code).toBe(4429);
  });

  it('4429 on a second connection_init sent before the first is answered', async () => {
    const client = await connect();
    client.send({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } });
    client.send({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } });
    expect((await client.closed).code).toBe(4429);
  });

  it('4409 on a subscribe reusing the id of an operation that is still running', async () => {
    // A long-running operation without a Subscription type: a connection test against a
    // Proxmox that answers /version only after 2 s.
    const created = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({
        query: 'mutation($input: CreateNodeInput!) { createNode(input: $input) { id } }',
        variables: { input: nodeInputFor(sim) },
      }),
    });
    const body = (await created.json()) as { data?: { createNode: { id: string } }; errors?: unknown };
    expect(body.errors, JSON.stringify(body.errors)).toBeUndefined();
    const nodeId = body.data!.createNode.id;
    sim.addFault({ kind: 'latency', ms: 2_000, pathPrefix: '/version' });

    const client = await acknowledged();
    const slow = {
      id: 'dup',
      type: 'subscribe',
      payload: { query: `mutation { testNodeConnection(id: "${nodeId}") { ok } }` },
    };
    client.send(slow);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(client.messages.filter((m) => m.id === 'dup')).toEqual([]); // still running
    client.send(slow);
    const closed = await client.closed;
    expect(closed.code).toBe(4409);
  });

  it.skipIf(!schemaHasSubscription)(
    '4409 on a subscribe reusing the id of a live vmidEvents subscription (needs Subscription.vmidEvents in the schema)',
    async () => {
      const client = await acknowledged();
      const sub = { id: 'events', type: 'subscribe', payload: { query: 'subscription { vmidEvents { version } }' } };
      client.send(sub);
      await new Promise((resolve) => setTimeout(resolve, 300));
      // A live subscription neither completes nor errors on its own.
      expect(client.messages.filter((m) => m.id === 'events' && (m.type === 'error' || m.type === 'complete'))).toEqual(
        [],
      );
      client.send(sub);
      expect((await client.closed).code).toBe(4409);
    },
  );

  it('allows reusing an id once its operation has completed', async () => {
    const client = await acknowledged();
    for (let i = 0; i < 3; i++) {
      client.send({ id: 'again', type: 'subscribe', payload: { query: '{ me { name } }' } });
      await client.next('complete', 'again');
      client.messages.length = 0;
    }
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
  });
});
