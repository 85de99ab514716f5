import type { ExecutionResult } from 'graphql';
import { describe, expect, it } from 'vitest';
import { endOnAbort } from '../../src/graphql/plugins/end-subscriptions-on-shutdown.js';
import { EventStream, type Push } from '../../src/vmids/event-stream.js';

/** The stream every subscription is served from, on shutdown (end-to-end in test/limits/shutdown.test.ts). */
describe('endOnAbort', () => {
  const setup = (signal: AbortSignal) => {
    let push!: Push<ExecutionResult>;
    let sourceEnds = 0;
    const source = new EventStream<ExecutionResult>(async (p, stop) => {
      push = p;
      await stop;
      sourceEnds++;
    });
    return {
      stream: endOnAbort(source, signal),
      push: (n: number) => push({ data: { n } }),
      sourceEnds: () => sourceEnds,
    };
  };
  const tick = () => new Promise((r) => setTimeout(r, 0));

  it('passes events through, then answers a pending next() with done on abort and ends the source once', async () => {
    const shutdown = new AbortController();
    const { stream, push, sourceEnds } = setup(shutdown.signal);
    const first = stream.next();
    await tick();
    push(1);
    expect(await first).toEqual({ value: { data: { n: 1 } }, done: false });
    const idle = stream.next();
    shutdown.abort();
    expect(await idle).toEqual({ value: undefined, done: true });
    expect(await stream.next()).toEqual({ value: undefined, done: true });
    await stream.return(undefined);
    await tick();
    expect(sourceEnds()).toBe(1);
  });

  it('is done at once when shutdown began before it started', async () => {
    const shutdown = new AbortController();
    shutdown.abort();
    const { stream } = setup(shutdown.signal);
    expect(await stream.next()).toEqual({ value: undefined, done: true });
  });
});
