import type { ExecutionResult } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { bearerToken } from '../../auth/api-token.js';
import type { RevocationWatch } from '../../auth/revocation-watch.js';
import { UnauthenticatedError } from '../../errors.js';
import type { RequestContext } from '../context.js';

type ResultStream = AsyncIterable<ExecutionResult>;

const DONE: IteratorResult<ExecutionResult> = { value: undefined, done: true };

/**
 * An SSE subscription is authenticated once, when its request arrives, and may then stream for
 * days. When its token is revoked, the stream's last event is an UNAUTHENTICATED error and the
 * stream completes (within about 1.2 token cache lifetimes; RevocationWatch), as a revoked
 * token's WebSocket is closed with 4403. WebSocket operations are left to the socket's own
 * watch (app.ts): they have a sink.
 */
export function useEndRevokedSubscriptions(watch: RevocationWatch, onRevoked?: () => void): Plugin<RequestContext> {
  return {
    onSubscribe({ args }) {
      const ctx = args.contextValue as RequestContext & { request?: Request };
      if (ctx.sink || !ctx.viewer) return;
      const token = bearerToken(ctx.request?.headers.get('authorization'));
      if (!token) return;
      return {
        onSubscribeResult({ result, setResult }) {
          if (Symbol.asyncIterator in result) setResult(endOnRevocation(result as ResultStream, watch, token, onRevoked));
        },
      };
    },
  };
}

/** `stream`, until the token is revoked: then one error result, and done. */
export function endOnRevocation(stream: ResultStream, watch: RevocationWatch, token: string, onRevoked?: () => void): AsyncGenerator<ExecutionResult, void, void> {
  const source = stream[Symbol.asyncIterator]();
  const revokedStep = (): IteratorResult<ExecutionResult> => ({
    value: { errors: [new UnauthenticatedError('The API token has been revoked.')] },
    done: false,
  });
  let state: 'open' | 'revoked' | 'done' = 'open';
  /** The consumer's pending next(), answered by the source or by a revocation, whichever is first. */
  let waiting: ((step: IteratorResult<ExecutionResult>) => void) | null = null;
  /** next() calls made before the previous one settled wait for it (one `waiting` at a time). */
  let previous: Promise<unknown> = Promise.resolve();
  let sourceEnded: Promise<void> | null = null;
  /** Ends the source once: its end hooks release the subscription's slot, gauge and Redis listener. */
  const endSource = (): Promise<void> =>
    (sourceEnded ??= (async () => {
      await source.return?.();
    })().catch(() => undefined));
  /** Ends this stream; a pending next() gets `last`. */
  const close = (last: IteratorResult<ExecutionResult> = DONE) => {
    state = 'done';
    const pending = waiting;
    waiting = null;
    unwatch();
    pending?.(last);
  };
  const unwatch = watch.watch(token, {
    revoke() {
      if (state !== 'open') return;
      state = 'revoked';
      onRevoked?.();
      void endSource();
      if (waiting) close(revokedStep()); // else the next next() answers it
    },
  });
  const step = (): Promise<IteratorResult<ExecutionResult>> => {
    if (state === 'done') return Promise.resolve(DONE);
    if (state === 'revoked') {
      close();
      return Promise.resolve(revokedStep());
    }
    return new Promise((resolve, reject) => {
      waiting = resolve;
      source.next().then(
        (result) => {
          if (waiting !== resolve) return; // answered already (revoked, or returned)
          waiting = null;
          if (result.done) close();
          resolve(result);
        },
        (error: unknown) => {
          if (waiting !== resolve) return;
          waiting = null;
          close();
          reject(error);
        },
      );
    });
  };
  const settled = () => undefined;
  const gen = {
    next: () => {
      const result = previous.then(step);
      previous = result.then(settled, settled);
      return result;
    },
    return: () => {
      close();
      return endSource().then(() => DONE);
    },
    throw: (error: unknown) => {
      close();
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
