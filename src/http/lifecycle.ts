import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { WebSocketServer } from 'ws';

/** How long shutdown waits for in-flight requests and WebSocket close handshakes. */
const SHUTDOWN_GRACE_MS = 10_000;

/** Server shutting down (RFC 6455 "going away"). */
export const GOING_AWAY = 1001;

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

/**
 * Stops accepting, closes WebSockets with 1001 and lets in-flight HTTP requests finish;
 * sockets and connections still open after the grace period (a peer that never completes the
 * close handshake) are cut.
 */
export async function stopServing(server: Server, wss: WebSocketServer): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  const grace = setTimeout(() => {
    for (const client of wss.clients) client.terminate();
    server.closeAllConnections();
  }, SHUTDOWN_GRACE_MS);
  for (const client of wss.clients) client.close(GOING_AWAY, 'server shutting down');
  server.closeIdleConnections();
  await Promise.all([closed, new Promise<void>((resolve) => wss.close(() => resolve()))]);
  clearTimeout(grace);
}
