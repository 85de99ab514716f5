import { MessageType, stringifyMessage } from 'graphql-ws';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { CreateNode } from '../nodes/documents.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { FAST_PATHS_OFF, fastPathsOn } from '../support/fast-paths.js';
import { metricValue, startTestServer, type TestServer } from '../support/test-server.js';
import { ReleaseVmid, ReserveVmid, VmidEvents, VmidsTaken } from './documents.js';

/**
 * Subscription events over graphql-ws are written straight to the socket, one serialisation
 * per event and operation shape (src/fast-paths: share-subscription-events, graphql-ws-sink). What a raw
 * graphql-transport-ws client sees must not change: the frames graphql-ws itself writes, per
 * operation, until it completes; and a client that stops reading loses its subscriptions,
 * not the server its memory.
 */

interface Frame {
  raw: string;
  message: { id?: string; type: string; payload?: unknown };
}

interface RawClient {
  ws: WebSocket;
  frames: Frame[];
  send(message: unknown): void;
  /** Resolves once `predicate` holds for the frames received so far. */
  until(predicate: (frames: Frame[]) => boolean, what: string): Promise<void>;
}

const sockets = new Set<WebSocket>();
afterEach(() => {
  for (const s of sockets) s.terminate();
  sockets.clear();
});

async function connect(server: TestServer, token: string): Promise<RawClient> {
  const ws = new WebSocket(server.wsUrl, 'graphql-transport-ws');
  sockets.add(ws);
  const frames: Frame[] = [];
  const waiters = new Set<() => void>();
  ws.on('message', (data) => {
    const raw = data.toString();
    frames.push({ raw, message: JSON.parse(raw) as Frame['message'] });
    for (const w of [...waiters]) w();
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const client: RawClient = {
    ws,
    frames,
    send: (message) => ws.send(JSON.stringify(message)),
    until: (predicate, what) =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out waiting for ${what}`));
        }, 10_000);
        const check = () => {
          if (!predicate(frames)) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        waiters.add(check);
        check();
      }),
  };
  client.send({ type: 'connection_init', payload: { authorization: `Bearer ${token}` } });
  await client.until((f) => f.some((x) => x.message.type === 'connection_ack'), 'connection_ack');
  return client;
}

const activeSubscriptions = (server: TestServer) => metricValue(server, 'pvegraph_active_subscriptions');

const ofId = (frames: Frame[], id: string) => frames.filter((f) => f.message.id === id);
const nexts = (frames: Frame[], id: string) => ofId(frames, id).filter((f) => f.message.type === 'next');

describe('subscription events over graphql-ws', () => {
  let server: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;

  beforeAll(async () => {
    [server, sim] = await Promise.all([startTestServer(), startTestSimulator({ guests: 4 })]);
    token = (await server.createUser()).token;
    nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
    // A filled cache: the first reservation is then a RESERVED event (not a fill's REFRESHED).
    await server.gql(VmidsTaken, { nodeId }, token);
  });
  afterAll(async () => {
    await Promise.all([server?.stop(), sim?.stop()]);
  });

  it("arrive as graphql-ws's own next frames, per operation and selection, until the operation completes", async () => {
    const client = await connect(server, token);
    const small = `subscription($n: ID) { vmidEvents(nodeId: $n) { kind version } }`;
    client.send({ id: 'full-1', type: 'subscribe', payload: { query: VmidEvents, variables: { nodeId } } });
    client.send({ id: 'full-2', type: 'subscribe', payload: { query: VmidEvents, variables: { nodeId } } });
    client.send({ id: 'small', type: 'subscribe', payload: { query: small, variables: { n: nodeId } } });
    await client.until((f) => ['full-1', 'full-2', 'small'].every((id) => nexts(f, id).length === 1), 'three SYNCs');

    await server.gql(ReserveVmid, { nodeId, vmid: 7100 }, token);
    await client.until(
      (f) => ['full-1', 'full-2', 'small'].every((id) => nexts(f, id).length === 2),
      'three RESERVED events',
    );
    for (const id of ['full-1', 'full-2', 'small']) {
      const frame = nexts(client.frames, id)[1]!;
      // Byte for byte what graphql-ws's own stringifyMessage writes.
      expect(frame.raw).toBe(stringifyMessage({ id, type: MessageType.Next, payload: frame.message.payload as never }));
    }
    const full = nexts(client.frames, 'full-1')[1]!.message.payload as {
      data: { vmidEvents: Record<string, unknown> };
    };
    expect(full.data.vmidEvents).toMatchObject({ nodeId, kind: 'RESERVED', vmids: [7100] });
    expect(Object.keys(full.data.vmidEvents)).toEqual([
      'nodeId',
      'kind',
      'version',
      'at',
      'vmids',
      'added',
      'removed',
      'expiresAt',
    ]);
    expect(nexts(client.frames, 'small')[1]!.message.payload).toEqual({
      data: { vmidEvents: { kind: 'RESERVED', version: full.data.vmidEvents.version } },
    });

    // Completing one operation stops its events only, and it no longer counts as active.
    const active = await activeSubscriptions(server);
    client.send({ id: 'full-1', type: 'complete' });
    await expect.poll(() => activeSubscriptions(server)).toBe(active - 1);
    await server.gql(ReleaseVmid, { nodeId, vmid: 7100 }, token);
    await client.until((f) => nexts(f, 'full-2').length === 3 && nexts(f, 'small').length === 3, 'the RELEASED events');
    await server.gql(ReserveVmid, { nodeId, vmid: 7101 }, token);
    await client.until((f) => nexts(f, 'full-2').length === 4, 'the next event');
    expect(nexts(client.frames, 'full-1')).toHaveLength(2);
    // The server does not answer a client's own complete (graphql-ws), nor sends any error.
    expect(client.frames.filter((f) => f.message.type === 'complete' || f.message.type === 'error')).toEqual([]);
    await server.gql(ReleaseVmid, { nodeId, vmid: 7101 }, token);
    // Closing the socket ends the other two.
    client.ws.close(1000);
    await expect.poll(() => activeSubscriptions(server)).toBe(active - 3);
  });
});

describe('a client that stops reading', () => {
  let server: TestServer;
  let sim: Simulator;

  beforeAll(async () => {
    sim = await startTestSimulator({ guests: 4 });
    server = await startTestServer({ env: { WS_MAX_BUFFERED_BYTES: '65536', MAX_SUBSCRIPTIONS_PER_USER: '1000' } });
  });
  afterAll(async () => {
    await Promise.all([server?.stop(), sim?.stop()]);
  });

  it('has its subscriptions ended with SERVICE_UNAVAILABLE once its socket holds WS_MAX_BUFFERED_BYTES; the socket stays usable', async ({
    skip,
  }) => {
    // WS_MAX_BUFFERED_BYTES is the fast path's socket sink's; plain graphql-ws waits for each
    // write, and the event stream ends a subscription 1024 events behind instead.
    skip(!fastPathsOn, FAST_PATHS_OFF);
    const { token } = await server.createUser();
    const nodeId = (await server.gql(CreateNode, { input: nodeInputFor(sim) as never }, token)).data!.createNode.id;
    await server.gql(VmidsTaken, { nodeId }, token); // each mutation below is then one event
    const client = await connect(server, token);
    const ids = Array.from({ length: 100 }, (_, i) => `s${i}`);
    for (const id of ids) client.send({ id, type: 'subscribe', payload: { query: VmidEvents, variables: { nodeId } } });
    await client.until((f) => ids.every((id) => nexts(f, id).length === 1), 'every SYNC');
    const before = await activeSubscriptions(server);
    expect(before).toBeGreaterThanOrEqual(100);

    // Stop reading; the kernel's socket buffers fill first, then the server's. Every event is
    // about 17 KB on this socket (100 operations). This takes a few hundred events (~3 s),
    // well within graphql-ws's keep-alive (a socket that answers no ping for 24 s is cut).
    client.ws.pause();
    let events = 0;
    for (let vmid = 7200; events < 4_000 && (await activeSubscriptions(server)) > before - 100; vmid++) {
      await server.gql(ReserveVmid, { nodeId, vmid }, token);
      await server.gql(ReleaseVmid, { nodeId, vmid }, token);
      events += 2;
    }
    expect(await activeSubscriptions(server)).toBe(before - 100);

    client.ws.resume();
    await client.until(
      (f) => ids.every((id) => ofId(f, id).some((x) => x.message.type === 'error')),
      'an error for every operation',
    );
    for (const id of ids) {
      const frames = ofId(client.frames, id);
      const last = frames.at(-1)!;
      // One error, and nothing after it.
      expect(last.message.type).toBe('error');
      expect(frames.filter((f) => f.message.type === 'error')).toHaveLength(1);
      const [error] = last.message.payload as Array<{ message: string; extensions?: { code?: string } }>;
      expect(error!.extensions?.code).toBe('SERVICE_UNAVAILABLE');
      expect(error!.message).toMatch(/fell behind/);
      const versions = frames
        .slice(0, -1)
        .map((f) => (f.message.payload as { data: { vmidEvents: { version: number } } }).data.vmidEvents.version);
      expect(versions.length).toBeGreaterThan(1);
      // What did arrive arrived in order, without gaps.
      expect(versions).toEqual(versions.map((_, i) => versions[0]! + i));
    }

    // The socket is still open and subscribes again, starting with a SYNC.
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
    client.send({ id: 'again', type: 'subscribe', payload: { query: VmidEvents, variables: { nodeId } } });
    await client.until((f) => nexts(f, 'again').length === 1, 'a new SYNC');
    expect(
      (nexts(client.frames, 'again')[0]!.message.payload as { data: { vmidEvents: { kind: string } } }).data.vmidEvents
        .kind,
    ).toBe('SYNC');
  });
});
