import type { ExecutionResult } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { RequestContext } from '../context.js';
import { endableStream } from '../endable-stream.js';

/**
 * On shutdown (SIGTERM, SIGINT) every subscription stream completes, over WebSocket and SSE
 * alike: graphql-ws then sends the operation's `complete`, Yoga ends the SSE response with its
 * `complete` event, and the client knows the stream ended rather than broke. Last in the
 * chain, so the plugins that register with a stream's end (gauge, cap, masking) are run by it.
 */
export function useEndSubscriptionsOnShutdown(shutdown: AbortSignal): Plugin<RequestContext> {
  return {
    onSubscribe() {
      return {
        onSubscribeResult({ result, setResult }) {
          if (Symbol.asyncIterator in result) setResult(endOnAbort(result as AsyncIterable<ExecutionResult>, shutdown));
        },
      };
    },
  };
}

/** `stream` until `signal` aborts: then a pending next() answers done, and the source is ended. */
export function endOnAbort(
  stream: AsyncIterable<ExecutionResult>,
  signal: AbortSignal,
): AsyncGenerator<ExecutionResult, void, void> {
  const abort = () => endable.end();
  const endable = endableStream(stream, () => signal.removeEventListener('abort', abort));
  if (signal.aborted) abort();
  else signal.addEventListener('abort', abort, { once: true });
  return endable.stream;
}
