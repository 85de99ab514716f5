import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { AuthService } from '../../src/auth/auth-service.js';
import { openPostgres } from '../../src/db/database.js';
import { TEST_REDIS_URL } from '../support/env.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { createTestDatabase } from '../support/test-database.js';
import { uniqueRedisPrefix } from '../support/test-server.js';

const ROOT = path.resolve(import.meta.dirname, '../..');

describe('graceful shutdown on SIGTERM', () => {
  let db: Awaited<ReturnType<typeof createTestDatabase>>;
  let sim: Simulator;
  let child: ChildProcess | undefined;

  beforeAll(async () => {
    [db, sim] = await Promise.all([createTestDatabase(), startTestSimulator()]);
  });
  afterAll(async () => {
    child?.kill('SIGKILL');
    await sim.stop();
    await db.drop();
  });

  /** The server as a process (a user of its own, on the shared database), once it listens. */
  async function startServer() {
    const handle = await openPostgres(db.url);
    const { token } = await new AuthService(handle.prisma, { cacheTtlMs: 0 }).createUser(
      `ops-${randomBytes(3).toString('hex')}`,
    );
    await handle.close();

    const { VITEST: _v, NODE_ENV: _n, ...env } = process.env;
    const server = spawn(process.execPath, ['--import', 'tsx', 'src/main.ts'], {
      cwd: ROOT,
      env: {
        ...env,
        DATABASE_URL: db.url,
        REDIS_URL: TEST_REDIS_URL,
        REDIS_KEY_PREFIX: uniqueRedisPrefix(),
        ENCRYPTION_KEY: randomBytes(32).toString('base64'),
        ALLOW_LOOPBACK_NODE_HOSTS: 'true',
        PORT: '0',
        LOG_LEVEL: 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = server;
    let out = '';
    server.stdout.on('data', (d: Buffer) => (out += d.toString()));
    server.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => server.once('exit', (code) => resolve(code)));
    await expect.poll(() => /(http:\/\/127\.0\.0\.1:\d+)\/graphql/.test(out), { timeout: 30_000 }).toBe(true);
    const url = /(http:\/\/127\.0\.0\.1:\d+)\/graphql/.exec(out)![1]!;
    return { server, token, url, exited, output: () => out };
  }

  it('finishes in-flight requests, closes WebSockets with 1001 and exits 0', { timeout: 60_000 }, async () => {
    const { server, token, url, exited, output } = await startServer();

    const gql = (query: string, variables?: unknown) =>
      fetch(`${url}/graphql`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
        body: JSON.stringify({ query, variables }),
      }).then((r) => r.json() as Promise<{ data?: Record<string, { id?: string; ok?: boolean }>; errors?: unknown }>);
    const created = await gql('mutation($i: CreateNodeInput!) { createNode(input: $i) { id } }', {
      i: nodeInputFor(sim),
    });
    const nodeId = created.data!.createNode!.id!;

    const socket = new WebSocket(url.replace('http', 'ws') + '/graphql', 'graphql-transport-ws');
    const wsClosed = new Promise<number>((resolve) => socket.once('close', (code) => resolve(code)));
    await new Promise<void>((resolve) => {
      socket.once('open', () =>
        socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } })),
      );
      socket.on('message', (m) => JSON.parse(String(m)).type === 'connection_ack' && resolve());
    });

    // A request that is still waiting on Proxmox when the signal arrives.
    sim.addFault({ kind: 'latency', ms: 1_500, pathPrefix: '/version' });
    const inFlight = gql('mutation($id: ID!) { testNodeConnection(id: $id) { ok } }', { id: nodeId });
    await new Promise((r) => setTimeout(r, 300));
    server.kill('SIGTERM');

    expect(await wsClosed).toBe(1001);
    expect((await inFlight).data?.testNodeConnection?.ok).toBe(true);
    expect(await exited).toBe(0);
    expect(output()).toMatch(/"signal":"SIGTERM"/);
    await expect(fetch(`${url}/healthz`)).rejects.toThrow();
  });

  it('completes SSE and WebSocket subscriptions before closing, and cuts nothing', { timeout: 60_000 }, async () => {
    const { server, token, url, exited, output } = await startServer();
    const headers = { 'content-type': 'application/json', authorization: `Bearer ${token}` };
    const created = (await (
      await fetch(`${url}/graphql`, {
        method: 'POST',
        headers,
        body: JSON.stringify({
          query: 'mutation($i: CreateNodeInput!) { createNode(input: $i) { id } }',
          variables: { i: nodeInputFor(sim) },
        }),
      })
    ).json()) as { data: { createNode: { id: string } } };
    const subscription = {
      query: 'subscription($n: ID) { vmidEvents(nodeId: $n) { kind } }',
      variables: { n: created.data.createNode.id },
    };

    // SSE: read until the stream ends.
    const sse = await fetch(`${url}/graphql`, {
      method: 'POST',
      headers: { ...headers, accept: 'text/event-stream' },
      body: JSON.stringify(subscription),
    });
    const reader = sse.body!.getReader();
    let sseText = '';
    const sseEnded = (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        sseText += Buffer.from(value).toString();
      }
    })();
    await expect.poll(() => sseText, { timeout: 10_000 }).toMatch(/SYNC/);

    // WebSocket: every message until the close frame.
    const socket = new WebSocket(url.replace('http', 'ws') + '/graphql', 'graphql-transport-ws');
    const messages: Array<{ type: string; id?: string }> = [];
    const wsClosed = new Promise<number>((resolve) => socket.once('close', (code) => resolve(code)));
    socket.on('message', (m) => {
      const message = JSON.parse(String(m)) as { type: string; id?: string };
      messages.push(message);
      if (message.type === 'connection_ack')
        socket.send(JSON.stringify({ id: 'events', type: 'subscribe', payload: subscription }));
    });
    socket.once('open', () =>
      socket.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } })),
    );
    await expect.poll(() => messages.some((m) => m.type === 'next'), { timeout: 10_000 }).toBe(true);

    server.kill('SIGTERM');
    expect(await wsClosed).toBe(1001);
    // The operation was completed before the socket closed.
    expect(messages.at(-1)).toEqual({ id: 'events', type: 'complete' });
    await sseEnded;
    expect(sseText.trimEnd()).toMatch(/event: complete\s*(data:\s*)?$/);
    expect(await exited).toBe(0);
    // Nothing was left for the grace period to cut.
    expect(output()).not.toMatch(/cutting connections/);
  });
});
