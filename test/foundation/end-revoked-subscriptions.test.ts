import type { ExecutionResult } from 'graphql';
import { describe, expect, it } from 'vitest';
import { RevocationWatch } from '../../src/auth/revocation-watch.js';
import { endOnRevocation } from '../../src/graphql/plugins/end-revoked-subscriptions.js';
import { EventStream, type Push } from '../../src/vmids/event-stream.js';

/**
 * The stream an SSE subscription is served from, once its token is revoked: one
 * UNAUTHENTICATED result, then done, and the subscription's own stream ended exactly once
 * (end-to-end in auth.test.ts). Driven here with a real EventStream and a sweep that finds
 * the token revoked.
 */
describe('endOnRevocation', () => {
  const setup = () => {
    let push!: Push<ExecutionResult>;
    let sourceEnds = 0;
    const source = new EventStream<ExecutionResult>(async (p, stop) => {
      push = p;
      await stop;
      sourceEnds++;
    });
    let revoked = false;
    const watch = new RevocationWatch({ verify: async () => (revoked ? null : { userId: 'u' }), intervalMs: 60_000 });
    const stream = endOnRevocation(source, watch, 'token');
    const revoke = async () => {
      revoked = true;
      await watch.sweep();
    };
    const event = (n: number): ExecutionResult => ({ data: { n } });
    return { stream, revoke, push: (n: number) => push(event(n)), event, sourceEnds: () => sourceEnds, watch };
  };
  /** Lets the stream start its source (EventStream runs its executor on the first next()). */
  const tick = () => new Promise((r) => setTimeout(r, 0));
  const revokedResult = {
    value: {
      errors: [
        expect.objectContaining({
          message: 'The API token has been revoked.',
          extensions: expect.objectContaining({ code: 'UNAUTHENTICATED' }),
        }),
      ],
    },
    done: false,
  };

  it('passes events through until the token is revoked, then answers a pending next() with the error and ends', async () => {
    const { stream, revoke, push, event, sourceEnds, watch } = setup();
    const first = stream.next();
    await tick();
    push(1);
    expect(await first).toEqual({ value: event(1), done: false });
    const pending = stream.next(); // idle subscription: waiting for an event
    await revoke();
    expect(await pending).toEqual(revokedResult);
    expect(await stream.next()).toEqual({ value: undefined, done: true });
    await stream.return(undefined); // the transport's cancel after the end
    await tick();
    expect(sourceEnds()).toBe(1);
    expect(watch.size).toBe(0);
  });

  it('answers the revocation at the next next() when none was pending', async () => {
    const { stream, revoke, push } = setup();
    const first = stream.next();
    await tick();
    push(1);
    await first;
    await revoke();
    push(2); // the source is ended: nothing after the revocation is delivered
    expect(await stream.next()).toEqual(revokedResult);
    expect(await stream.next()).toEqual({ value: undefined, done: true });
  });

  it('keeps the order of next() calls made without waiting', async () => {
    const { stream, push, event } = setup();
    const a = stream.next();
    const b = stream.next();
    await tick();
    push(1);
    push(2);
    expect(await a).toEqual({ value: event(1), done: false });
    expect(await b).toEqual({ value: event(2), done: false });
  });

  it('stops watching once the client has gone (return), and ends the source once', async () => {
    const { stream, revoke, sourceEnds, watch } = setup();
    const pending = stream.next();
    await tick();
    expect(watch.size).toBe(1);
    await stream.return(undefined);
    expect(await pending).toEqual({ value: undefined, done: true });
    expect(watch.size).toBe(0);
    await revoke(); // nothing left to revoke
    await tick();
    expect(sourceEnds()).toBe(1);
  });
});
