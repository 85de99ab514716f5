import { WebSocket } from 'ws';
import type { SubscriptionSink } from '../graphql/context.js';
import { SubscriberBehindError } from '../vmids/event-stream.js';

/**
 * Writes one graphql-ws operation's `next` messages straight to its socket: the frame
 * graphql-ws's stringifyMessage({ id, type: 'next', payload }) would write, byte for byte,
 * around a payload serialised once for every subscriber that shares it.
 *
 * `maxBufferedBytes` (WS_MAX_BUFFERED_BYTES): once the socket holds more unsent data than
 * this, the next event ends the subscription with SubscriberBehindError, so a client that
 * stopped reading cannot grow the server's memory. ws's bufferedAmount counts characters for
 * text it has not encoded yet, bytes otherwise; our JSON is nearly all ASCII. (graphql-ws
 * alone waited for each write before taking the next event, which then queued in the
 * EventStream, up to MAX_PENDING.)
 */
export function graphqlWsSink(socket: WebSocket, id: string, maxBufferedBytes: number): SubscriptionSink {
  const head = `{"id":${JSON.stringify(id)},"type":"next","payload":`;
  return {
    next(serializedResult) {
      // Closing: graphql-ws ends the operation itself.
      if (socket.readyState !== WebSocket.OPEN) return;
      if (socket.bufferedAmount > maxBufferedBytes) throw new SubscriberBehindError();
      socket.send(`${head}${serializedResult}}`);
    },
  };
}
