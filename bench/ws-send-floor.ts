/**
 * Diagnostic (not part of `npm run bench`): what one delivery to one WebSocket costs on this
 * machine apart from pvegraph, and whether `ws` itself is a share of it worth bypassing.
 * A bare `ws` server process holds N plain `ws` clients of a second process and, per round,
 * writes one ~140-byte text message to each of them in one loop, three ways:
 *   send    `ws.send(string)` (what the server's sink does);
 *   buffer  `ws.send(Buffer, { binary: false })` (no UTF-8 encoding inside ws);
 *   frame   a WebSocket frame built here, written straight to the net.Socket (no ws Sender).
 * Prints, per way, the loop's wall time, the server's CPU during it, and the time until the
 * last client had its message (BENCHMARKS.md, finding 23).
 *
 *   npx tsx bench/ws-send-floor.ts            (N=10000 clients, 8 rounds per way, 2 unmeasured)
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { forkTs, nextMessage } from './lib.js';

const N = Number(process.env.N ?? 10000);
const ROUNDS = Number(process.env.ROUNDS ?? 8);
const WAYS = ['send', 'buffer', 'frame'] as const;
type Way = (typeof WAYS)[number];
const now = () => performance.timeOrigin + performance.now();
const PAYLOAD = '{"data":{"vmidEvents":{"kind":"INVALIDATED","version":12345}}}';
/** A graphql-transport-ws `next` as graphql-ws writes it, with a per-client id. */
const message = (i: number) =>
  `{"id":"${i.toString(16).padStart(8, '0')}-7a1c-4b2e-9f00-5d3c2b1a0e9f","type":"next","payload":${PAYLOAD}}`;

/** An unmasked, final text frame (server → client), for payloads under 64 KiB. */
function textFrame(text: string): Buffer {
  const body = Buffer.from(text);
  const head =
    body.length < 126
      ? Buffer.from([0x81, body.length])
      : Buffer.from([0x81, 126, body.length >> 8, body.length & 0xff]);
  return Buffer.concat([head, body]);
}

function server() {
  const http = createServer();
  const wss = new WebSocketServer({ server: http });
  const sockets: WebSocket[] = [];
  wss.on('connection', (ws) => sockets.push(ws));
  process.on('message', ({ way }: { way: Way }) => {
    const cpu = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < sockets.length; i++) {
      const ws = sockets[i]!;
      if (way === 'send') ws.send(message(i));
      else if (way === 'buffer') ws.send(Buffer.from(message(i)), { binary: false });
      // ws keeps no queue of its own here (no permessage-deflate), so order is kept.
      else (ws as unknown as { _socket: import('node:net').Socket })._socket.write(textFrame(message(i)));
    }
    const used = process.cpuUsage(cpu);
    process.send!({ type: 'sent', loopMs: performance.now() - t0, cpuMs: (used.user + used.system) / 1000 });
  });
  http.listen(0, '127.0.0.1', () => process.send!({ type: 'listening', port: (http.address() as AddressInfo).port }));
}

async function clients(port: number) {
  let open = 0;
  let got = 0;
  for (let i = 0; i < N; i++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/`);
    ws.on('error', (e) => console.error(`client ${i}: ${e.message}`));
    ws.on('open', () => {
      if (++open === N) process.send!({ type: 'ready' });
    });
    ws.on('message', (data) => {
      JSON.parse(data.toString());
      if (++got === N) {
        got = 0;
        process.send!({ type: 'all', at: now() });
      }
    });
    // At most ~200 handshakes in flight: the server's accept backlog would drop the rest.
    while (open < i - 200) await new Promise((r) => setTimeout(r, 5));
  }
}

async function main() {
  const srv = forkTs('bench/ws-send-floor.ts', ['server']);
  const { port } = await nextMessage<{ port: number }>(srv, (m) => m?.type === 'listening');
  const cli = forkTs('bench/ws-send-floor.ts', ['clients', String(port)]);
  await nextMessage(cli, (m) => m?.type === 'ready');
  const rows: Record<Way, string[]> = { send: [], buffer: [], frame: [] };
  for (let round = 0; round < ROUNDS; round++) {
    for (const way of WAYS) {
      const t0 = now();
      const all = nextMessage<{ at: number }>(cli, (m) => m?.type === 'all');
      const sent = nextMessage<{ loopMs: number; cpuMs: number }>(srv, (m) => m?.type === 'sent');
      srv.send({ way });
      const [s, a] = await Promise.all([sent, all]);
      if (round >= 2) rows[way].push(`${s.loopMs.toFixed(0)}/${s.cpuMs.toFixed(0)}/${(a.at - t0).toFixed(0)}`);
      await new Promise((r) => setTimeout(r, 300));
    }
  }
  console.log(`${N} clients; per round: server loop ms / server CPU ms / last client has it, ms`);
  for (const way of WAYS) console.log(`${way.padEnd(6)} ${rows[way].join('  ')}`);
  srv.kill();
  cli.kill();
}

const [role, arg] = process.argv.slice(2);
if (role === 'server') server();
else if (role === 'clients') void clients(Number(arg));
else await main();
