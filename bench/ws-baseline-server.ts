/**
 * Scenario 2 baseline: a bare `ws` server that broadcasts one message to every connected
 * client. It speaks just enough of graphql-transport-ws (connection_ack, a first SYNC `next`
 * per subscribe, pong) that the very same graphql-ws client fleet (bench/subscribers.ts) can
 * connect to it, so receiver-side costs are identical and only the server differs.
 *
 * POST /broadcast → sends one INVALIDATED `next` to every subscription, answers when queued.
 * env: PORT
 */
import { createServer } from 'node:http';
import { type WebSocket, WebSocketServer } from 'ws';

const port = Number(process.env.PORT);
const subs = new Set<{ ws: WebSocket; id: string }>();
const byWs = new Map<WebSocket, Array<{ ws: WebSocket; id: string }>>();
let version = 0;

const server = createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/broadcast') {
    version++;
    // One serialisation for all: the payload is the same, only the id differs.
    const tail = `","type":"next","payload":{"data":{"vmidEvents":{"kind":"INVALIDATED","version":${version}}}}}`;
    let sent = 0;
    for (const s of subs) {
      if (s.ws.readyState !== s.ws.OPEN) continue;
      s.ws.send(`{"id":"${s.id}${tail}`);
      sent++;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ sent }));
    return;
  }
  if (req.url === '/healthz') {
    res.writeHead(200).end('ok');
    return;
  }
  res.writeHead(404).end();
});

const wss = new WebSocketServer({ server, path: '/graphql' });
wss.on('connection', (ws) => {
  ws.on('message', (raw) => {
    const msg = JSON.parse(raw.toString()) as { type: string; id?: string };
    if (msg.type === 'connection_init') ws.send('{"type":"connection_ack"}');
    else if (msg.type === 'ping') ws.send('{"type":"pong"}');
    else if (msg.type === 'subscribe' && msg.id) {
      const sub = { ws, id: msg.id };
      subs.add(sub);
      byWs.set(ws, [...(byWs.get(ws) ?? []), sub]);
      ws.send(
        JSON.stringify({ id: msg.id, type: 'next', payload: { data: { vmidEvents: { kind: 'SYNC', version } } } }),
      );
    } else if (msg.type === 'complete' && msg.id) {
      for (const s of byWs.get(ws) ?? []) if (s.id === msg.id) subs.delete(s);
    }
  });
  ws.on('close', () => {
    for (const s of byWs.get(ws) ?? []) subs.delete(s);
    byWs.delete(ws);
  });
});

server.listen(port, '127.0.0.1', () => process.send?.({ type: 'listening', port }));
process.on('SIGTERM', () => {
  for (const c of wss.clients) c.terminate();
  server.close();
  process.exit(0);
});
