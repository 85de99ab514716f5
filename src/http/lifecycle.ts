import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { GraphqlWsServer } from './graphql-ws-server.js';

/** How long shutdown waits for in-flight requests and WebSocket close handshakes. */
const SHUTDOWN_GRACE_MS = 10_000;

/** How long shutdown waits for graphql-ws to send the `complete` of every ended subscription. */
const COMPLETE_WAIT_MS = 1_000;

/** Server shutting down (RFC 6455 "going away"). */
const GOING_AWAY = 1001;

/** Binds the server; resolves with its URL (errors such as EADDRINUSE reject). */
export function listen(server: Server, port: number, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const addr = server.address() as AddressInfo;
      const h = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
      resolve(`http://${h}:${addr.port}`);
    });
  });
}

export interface Serving {
  server: Server;
  ws: GraphqlWsServer;
  /** Aborted first: every subscription stream completes (end-subscriptions-on-shutdown.ts). */
  shutdown: AbortController;
  log: Logger;
}

/**
 * Stops accepting; completes every subscription (graphql-ws `complete`, SSE `complete` event),
 * then closes WebSockets with 1001 and lets in-flight HTTP requests finish. Sockets and
 * connections still open after the grace period (a peer that never completes the close
 * handshake) are cut.
 */
export async function stopServing({ server, ws, shutdown, log }: Serving): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  shutdown.abort();
  // Bounded: a client that stopped reading may hold its `complete` back.
  await Promise.race([ws.streamsEnded(), sleep(COMPLETE_WAIT_MS, undefined, { ref: false })]);
  // graphql-ws sends a `complete` right after telling of it: in the socket before the close frame.
  await nextTurn();
  const grace = setTimeout(() => {
    log.warn('shutdown: cutting connections still open after the grace period');
    for (const client of ws.wss.clients) client.terminate();
    server.closeAllConnections();
  }, SHUTDOWN_GRACE_MS);
  for (const client of ws.wss.clients) client.close(GOING_AWAY, 'server shutting down');
  server.closeIdleConnections();
  await Promise.all([closed, new Promise<void>((resolve) => ws.wss.close(() => resolve()))]);
  clearTimeout(grace);
}
