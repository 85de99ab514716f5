import {
  type ExecutionArgs,
  type ExecutionResult,
  GraphQLObjectType,
  GraphQLSchema,
  GraphQLString,
  parse,
  subscribe,
} from 'graphql';
import { describe, expect, it } from 'vitest';
import { createErrorMasker } from '../../src/graphql/plugins/mask-errors.js';
import { useShareSubscriptionEvents } from '../../src/fast-paths/share-subscription-events.js';
import { createLogger } from '../../src/logging.js';
import { DomainError, ErrorCode } from '../../src/errors.js';
import { EventStream, type Push, type Stop } from '../../src/vmids/event-stream.js';

/**
 * The contract the direct WebSocket delivery relies on (ws-delivery.test.ts runs it end to
 * end): EventStream's synchronous drain, and the order of what reaches a subscription's sink
 * when results are asynchronous — events in order, nothing after the client completes, and
 * every event before a failure written before the failure is reported.
 */

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('EventStream.drain', () => {
  it('hands queued values first, then each push as it happens, and settles when the stream is returned', async () => {
    let push!: Push<number>;
    const stream = new EventStream<number>((p, stop) => {
      push = p;
      p(1);
      p(2);
      return stop;
    });
    const first = await stream.next(); // starts the executor; 2 stays queued
    expect(first).toEqual({ value: 1, done: false });
    const seen: number[] = [];
    let settled = false;
    const drained = stream.drain((v) => seen.push(v)).then(() => (settled = true));
    expect(seen).toEqual([2]);
    push(3);
    push(4);
    expect(seen).toEqual([2, 3, 4]);
    await stream.return();
    await drained;
    expect(settled).toBe(true);
    push(5);
    expect(seen).toEqual([2, 3, 4]);
  });

  it('ends the stream with what the sink throws, tells the pusher, and rejects the drain', async () => {
    let push!: Push<number>;
    let stop!: Stop;
    let cleanedUp = false;
    const stream = new EventStream<number>(async (p, s) => {
      push = p;
      stop = s;
      await s;
      cleanedUp = true;
    });
    const failure = new DomainError(ErrorCode.SERVICE_UNAVAILABLE, 'behind');
    const drained = stream.drain((v) => {
      if (v === 2) throw failure;
    });
    push(1);
    expect(() => push(2)).toThrow(failure);
    await expect(drained).rejects.toBe(failure);
    await stop;
    await sleep(0);
    expect(cleanedUp).toBe(true);
    await expect(stream.drain(() => undefined)).resolves.toBeUndefined();
  });
});

describe('a subscription written to a sink, with an asynchronous field', () => {
  // The field resolves later than the event arrives, so results are promises.
  const Event = new GraphQLObjectType({
    name: 'Event',
    fields: {
      value: { type: GraphQLString, resolve: async (e: { v: string; ms: number }) => (await sleep(e.ms), e.v) },
    },
  });
  let push!: Push<{ v: string; ms: number }>;
  let stop!: Stop;
  const schema = new GraphQLSchema({
    query: new GraphQLObjectType({ name: 'Query', fields: { x: { type: GraphQLString } } }),
    subscription: new GraphQLObjectType({
      name: 'Subscription',
      fields: {
        events: {
          type: Event,
          subscribe: () =>
            new EventStream<{ v: string; ms: number }>(async (p, s) => {
              push = p;
              stop = s;
              await s;
            }),
          resolve: (e: unknown) => e,
        },
      },
    }),
  });

  async function start() {
    let subscribeFn!: (args: ExecutionArgs) => unknown;
    const plugin = useShareSubscriptionEvents(createErrorMasker(createLogger('silent')));
    (plugin.onSubscribe as (p: unknown) => void)({
      subscribeFn: subscribe,
      setSubscribeFn: (fn: typeof subscribeFn) => (subscribeFn = fn),
    });
    const written: string[] = [];
    const sink = { next: (s: string) => void written.push(s) };
    const args: ExecutionArgs = {
      schema,
      document: parse('subscription { events { value } }'),
      contextValue: { sink, requestId: 'r' },
    };
    const stream = (await subscribeFn(args)) as AsyncGenerator<ExecutionResult>;
    const outcome = stream.next().then(
      (r) => ({ done: r.done }),
      (e: Error) => ({ error: e.message }),
    );
    await sleep(5); // the executor has started
    return { stream, written, outcome };
  }

  it('writes results in event order, even when a later one resolves first', async () => {
    const { stream, written } = await start();
    push({ v: 'a', ms: 30 });
    push({ v: 'b', ms: 1 });
    push({ v: 'c', ms: 0 });
    await sleep(60);
    expect(written).toEqual(['a', 'b', 'c'].map((v) => JSON.stringify({ data: { events: { value: v } } })));
    await stream.return(undefined);
  });

  it('writes nothing more once the client completes, though results were pending', async () => {
    const { stream, written, outcome } = await start();
    push({ v: 'a', ms: 10 });
    push({ v: 'b', ms: 10 });
    await stream.return(undefined);
    expect(await outcome).toEqual({ done: true });
    await sleep(40);
    expect(written).toEqual([]);
  });

  it('writes the events before a failure, then reports the failure', async () => {
    const { written, outcome } = await start();
    push({ v: 'a', ms: 10 });
    stop(new DomainError(ErrorCode.SERVICE_UNAVAILABLE, 'Redis cannot be reached.'));
    const order: string[] = [];
    await outcome.then((o) => order.push(`outcome ${JSON.stringify(o)} after ${written.length} written`));
    expect(order).toEqual(['outcome {"error":"Redis cannot be reached."} after 1 written']);
    expect(written).toEqual([JSON.stringify({ data: { events: { value: 'a' } } })]);
  });
});
