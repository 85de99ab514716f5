import type { ExecutionResult } from 'graphql';

/*
 * The protocol between the shared subscription executor (src/fast-paths/share-subscription-events.ts)
 * and the plugins that register with the streams it returns (mask-errors, observe-operations,
 * subscription-cap). With the fast paths off no stream is shared, and onStreamEnd hands
 * envelop's own onEnd hook back: the plugins then run as plain envelop plugins.
 */

/**
 * Marks a stream whose results are masked already and which calls its own end callbacks, so
 * the plugins that would otherwise wrap every subscriber's stream in one more async layer per
 * concern (envelop's onNext/onEnd wrappers: masking, the active-subscription gauge, the
 * subscription cap) register with it instead — at 10,000 subscribers those layers were about
 * half the JavaScript cost of delivering one event (BENCHMARKS.md, scenario 2).
 */
const SHARED_STREAM = Symbol('pvegraph.sharedStream');

export interface SharedStream {
  [SHARED_STREAM]: { onEnd(callback: () => void): void };
}

export function isSharedStream(value: unknown): value is SharedStream {
  return typeof value === 'object' && value !== null && SHARED_STREAM in value;
}

/**
 * Runs `callback` once when a subscription stream ends (done, returned, thrown or failed):
 * registered with a shared stream directly, otherwise through envelop's onEnd hook.
 */
export function onStreamEnd(stream: unknown, callback: () => void): { onEnd: () => void } | undefined {
  if (isSharedStream(stream)) {
    stream[SHARED_STREAM].onEnd(callback);
    return undefined;
  }
  return { onEnd: callback };
}

/** The end callbacks of one shared stream, run once. */
export function endHooks(): { end: () => void; hooks: SharedStream[typeof SHARED_STREAM] } {
  const callbacks: Array<() => void> = [];
  let ended = false;
  return {
    end: () => {
      if (ended) return;
      ended = true;
      for (const callback of callbacks) callback();
    },
    hooks: {
      onEnd(callback: () => void) {
        if (ended) callback();
        else callbacks.push(callback);
      },
    },
  };
}

export type StreamMethods = Pick<AsyncGenerator<ExecutionResult, void, void>, 'next' | 'return' | 'throw'>;

/** The async generator graphql-ws and envelop see, marked as a shared stream. */
export function sharedStream(
  hooks: SharedStream[typeof SHARED_STREAM],
  methods: StreamMethods,
): AsyncGenerator<ExecutionResult, void, void> {
  const gen = {
    ...methods,
    [SHARED_STREAM]: hooks,
    [Symbol.asyncIterator]() {
      return this;
    },
    [Symbol.asyncDispose]() {
      return gen.return(undefined).then(() => undefined);
    },
  } as AsyncGenerator<ExecutionResult, void, void>;
  return gen;
}
