import type { ExecutionResult } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { RequestContext } from '../context.js';

const DONE: IteratorResult<ExecutionResult> = { value: undefined, done: true };

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
export function endOnAbort(stream: AsyncIterable<ExecutionResult>, signal: AbortSignal): AsyncGenerator<ExecutionResult, void, void> {
  const source = stream[Symbol.asyncIterator]();
  let ended = false;
  /** The consumer's pending next(), answered by the source or by the abort, whichever is first. */
  let waiting: ((step: IteratorResult<ExecutionResult>) => void) | null = null;
  let sourceEnded: Promise<void> | null = null;
  /** Ends the source once: its end hooks release the subscription's slot, gauge and listener. */
  const endSource = (): Promise<void> =>
    (sourceEnded ??= (async () => {
      await source.return?.();
    })().catch(() => undefined));
  const end = () => {
    if (ended) return;
    ended = true;
    signal.removeEventListener('abort', abort);
    const pending = waiting;
    waiting = null;
    pending?.(DONE);
  };
  const abort = () => {
    end();
    void endSource();
  };
  if (signal.aborted) abort();
  else signal.addEventListener('abort', abort, { once: true });

  const gen = {
    next: (): Promise<IteratorResult<ExecutionResult>> => {
      if (ended) return Promise.resolve(DONE);
      return new Promise((resolve, reject) => {
        waiting = resolve;
        source.next().then(
          (step) => {
            if (waiting !== resolve) return; // answered already (aborted, or returned)
            waiting = null;
            if (step.done) end();
            resolve(step);
          },
          (error: unknown) => {
            if (waiting !== resolve) return;
            waiting = null; // answered with the error, not by end()
            end();
            reject(error);
          },
        );
      });
    },
    return: () => {
      end();
      return endSource().then(() => DONE);
    },
    throw: (error: unknown) => {
      end();
      return endSource().then(() => Promise.reject(error));
    },
    [Symbol.asyncIterator]() {
      return gen;
    },
    [Symbol.asyncDispose]() {
      return gen.return().then(() => undefined);
    },
  };
  return gen as AsyncGenerator<ExecutionResult, void, void>;
}
