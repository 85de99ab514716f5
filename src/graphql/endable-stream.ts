import type { ExecutionResult } from 'graphql';

const DONE: IteratorResult<ExecutionResult> = { value: undefined, done: true };

export interface EndableStream {
  /** What the transport iterates: the source's results until end(). */
  readonly stream: AsyncGenerator<ExecutionResult, void, void>;
  /**
   * Ends the stream from outside (a revoked token, shutdown): the source is ended, a pending
   * next() answers `last` (or done), and then done. False when the stream had ended already.
   */
  end(last?: ExecutionResult): boolean;
}

/**
 * A subscription stream that something other than its client or source may end. `onFinished`
 * runs once when the stream is over for whatever reason (ended, source done or failed,
 * returned by the transport): where its watchers let go.
 */
export function endableStream(results: AsyncIterable<ExecutionResult>, onFinished: () => void): EndableStream {
  const source = results[Symbol.asyncIterator]();
  let state: 'open' | 'ending' | 'done' = 'open';
  /** The result a next() still owes after end(last) with none pending. */
  let owed: IteratorResult<ExecutionResult> | null = null;
  /** The consumer's pending next(), answered by the source or by end(), whichever is first. */
  let waiting: ((step: IteratorResult<ExecutionResult>) => void) | null = null;
  /** next() calls made before the previous one settled wait for it (one `waiting` at a time). */
  let previous: Promise<unknown> = Promise.resolve();
  let sourceEnded: Promise<void> | null = null;
  /** Ends the source once: its end hooks release the subscription's slot, gauge and listener. */
  const endSource = (): Promise<void> =>
    (sourceEnded ??= (async () => {
      await source.return?.();
    })().catch(() => undefined));
  const finish = () => {
    if (state === 'done') return;
    state = 'done';
    onFinished();
  };
  /** Over: a pending next() gets `last`. */
  const close = (last: IteratorResult<ExecutionResult> = DONE) => {
    finish();
    const pending = waiting;
    waiting = null;
    pending?.(last);
  };
  const step = (): Promise<IteratorResult<ExecutionResult>> => {
    if (state === 'ending') {
      const last = owed ?? DONE;
      owed = null;
      finish();
      return Promise.resolve(last);
    }
    if (state === 'done') return Promise.resolve(DONE);
    return new Promise((resolve, reject) => {
      waiting = resolve;
      source.next().then(
        (result) => {
          if (waiting !== resolve) return; // answered already (ended, or returned)
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
  const stream = {
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
      return stream;
    },
    [Symbol.asyncDispose]() {
      return stream.return().then(() => undefined);
    },
  };
  return {
    stream,
    end(last) {
      if (state !== 'open') return false;
      void endSource();
      const lastStep = last ? { value: last, done: false as const } : DONE;
      if (waiting) close(lastStep);
      else {
        // The next next() answers it.
        state = 'ending';
        owed = lastStep;
      }
      return true;
    },
  };
}
