import { DomainError, ErrorCode } from '../errors.js';

/** Like Repeater's `stop`: call it to end the stream (with an error to fail it), await it to learn that it ended. */
export type Stop = ((error?: unknown) => void) & PromiseLike<void>;
export type Push<T> = (value: T) => void;

/** Values pushed while the consumer is not reading; more ends the stream with an error. */
export const MAX_PENDING = 1024;

/**
 * Ends a subscription whose client does not read its events (MAX_PENDING events waiting here,
 * or a socket whose unwritten bytes grew too large): its memory would otherwise grow without
 * bound. The client can subscribe again and starts with a SYNC.
 */
export class SubscriberBehindError extends DomainError {
  constructor() {
    super(
      ErrorCode.SERVICE_UNAVAILABLE,
      'This subscription fell behind (its client did not read events fast enough) and was ended; subscribe again.',
    );
  }
}

/**
 * A minimal push-based async iterator with Repeater's executor API (`new EventStream((push,
 * stop) => …)`), for fan-out paths where Repeater's per-push promises show up in profiles.
 * Semantics kept: the executor starts on the first next(); return() ends it (stop settles, so
 * the executor can clean up); values pushed before a stop are delivered before the end (or
 * the error); a consumer that falls MAX_PENDING values behind gets an error.
 */
export class EventStream<T> implements AsyncIterableIterator<T> {
  private readonly queue: T[] = [];
  private head = 0;
  private waiter: { resolve: (r: IteratorResult<T>) => void; reject: (e: unknown) => void } | null = null;
  /** Set by drain(): values go straight to it as they are pushed. */
  private sink: ((value: T) => void) | null = null;
  private drainer: { resolve: () => void; reject: (e: unknown) => void } | null = null;
  private state: 'initial' | 'running' | 'stopped' | 'done' = 'initial';
  private error: { value: unknown } | null = null;
  private stopped!: () => void;
  private readonly stopPromise = new Promise<void>((resolve) => {
    this.stopped = resolve;
  });
  private readonly stopFn: Stop;
  private readonly pushFn: Push<T>;
  /** Settles when the executor has returned (its cleanup after `await stop` is done). */
  private finished: Promise<unknown> | null = null;

  constructor(private executor: ((push: Push<T>, stop: Stop) => unknown) | null) {
    const stopPromise = this.stopPromise;
    this.stopFn = Object.assign((error?: unknown) => this.stop(error), {
      then: stopPromise.then.bind(stopPromise) as PromiseLike<void>['then'],
    });
    this.pushFn = (value: T) => this.push(value);
  }

  private push(value: T): void {
    if (this.state !== 'running' && this.state !== 'initial') return;
    if (this.sink) {
      // A failing sink ends the stream with its error, whoever pushed; the pusher is told too,
      // as with MAX_PENDING.
      try {
        this.sink(value);
      } catch (err) {
        this.stop(err);
        throw err;
      }
      return;
    }
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = null;
      waiter.resolve({ value, done: false });
      return;
    }
    if (this.queue.length - this.head >= MAX_PENDING) {
      throw new SubscriberBehindError();
    }
    this.queue.push(value);
  }

  private stop(error?: unknown): void {
    if (this.state === 'stopped' || this.state === 'done') return;
    this.state = 'stopped';
    if (error !== undefined) this.error = { value: error };
    this.executor = null;
    this.stopped();
    this.settleWaiter();
    this.settleDrainer();
  }

  /** After a stop: a drain() settles (nothing is queued in sink mode). */
  private settleDrainer(): void {
    const drainer = this.drainer;
    if (!drainer) return;
    this.drainer = null;
    this.sink = null;
    this.finish(() => drainer.resolve(), drainer.reject);
  }

  /** After a stop: a waiting consumer gets the end (or the error). */
  private settleWaiter(): void {
    const waiter = this.waiter;
    if (!waiter || this.head < this.queue.length) return;
    this.waiter = null;
    this.finish(waiter.resolve, waiter.reject);
  }

  private finish(resolve: (r: IteratorResult<T>) => void, reject: (e: unknown) => void): void {
    this.state = 'done';
    const error = this.error;
    this.error = null;
    if (error) reject(error.value);
    else resolve({ value: undefined, done: true });
  }

  private start(): void {
    const executor = this.executor;
    this.executor = null;
    this.state = 'running';
    try {
      const r = executor?.(this.pushFn, this.stopFn);
      if (r && typeof (r as PromiseLike<unknown>).then === 'function') {
        this.finished = Promise.resolve(r).then(undefined, (err: unknown) => this.stop(err));
      }
    } catch (err) {
      this.stop(err);
    }
  }

  /**
   * Consumes the stream without a promise per value, for fan-out to many subscribers: each
   * value (queued ones first) is handed to `onValue` synchronously as it is pushed. Settles when
   * the stream ends, or rejects with its error; `onValue` throwing ends the stream with that
   * error, as falling MAX_PENDING behind does. The stream's only consumer: no next() besides.
   */
  drain(onValue: (value: T) => void): Promise<void> {
    if (this.sink || this.waiter) return Promise.reject(new Error('This event stream has a consumer already.'));
    return new Promise<void>((resolve, reject) => {
      this.drainer = { resolve, reject };
      try {
        while (this.head < this.queue.length) {
          const value = this.queue[this.head]!;
          this.queue[this.head++] = undefined as T;
          onValue(value);
        }
      } catch (err) {
        this.queue.length = 0;
        this.head = 0;
        this.stop(err);
        return;
      }
      this.queue.length = 0;
      this.head = 0;
      if (this.state === 'stopped' || this.state === 'done') return this.settleDrainer();
      this.sink = onValue;
      if (this.state === 'initial') this.start();
    });
  }

  next(): Promise<IteratorResult<T>> {
    if (this.state === 'initial') this.start();
    if (this.head < this.queue.length) {
      const value = this.queue[this.head]!;
      this.queue[this.head++] = undefined as T;
      if (this.head === this.queue.length) {
        this.queue.length = 0;
        this.head = 0;
      }
      return Promise.resolve({ value, done: false });
    }
    if (this.state === 'done') return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      if (this.state === 'stopped') return this.finish(resolve, reject);
      if (this.waiter) {
        // Concurrent next() calls are not used by graphql-ws; chain them to keep order.
        const previous = this.waiter;
        this.waiter = {
          resolve: (r) => {
            previous.resolve(r);
            void this.next().then(resolve, reject);
          },
          reject: (e) => {
            previous.reject(e);
            resolve({ value: undefined, done: true });
          },
        };
        return;
      }
      this.waiter = { resolve, reject };
    });
  }

  return(): Promise<IteratorResult<T>> {
    this.queue.length = 0;
    this.head = 0;
    this.error = null;
    this.stop();
    this.state = 'done';
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.resolve({ value: undefined, done: true });
    // As Repeater: return() settles once the executor has cleaned up.
    const done = { value: undefined, done: true } as const;
    return this.finished ? this.finished.then(() => done) : Promise.resolve(done);
  }

  throw(error: unknown): Promise<IteratorResult<T>> {
    return this.return().then(() => Promise.reject(error));
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}
