import type { Plugin } from 'graphql-yoga';
import type { RequestContext } from '../context.js';

/**
 * A subscription sent over HTTP with an Accept header no streaming format matches (say
 * `application/json`) has already started when Yoga finds no result processor for it: Yoga
 * answers 406 and drops the stream without ending it. Left so, the subscription would hold its
 * per-user slot, the active-subscription gauge, its Redis listener and its revocation watch
 * until the process restarts. End it here. (Yoga's own result processors run before any
 * plugin's onResultProcess, so `resultProcessor` is already chosen when there is one.)
 */
export function useEndUnansweredStreams(): Plugin<RequestContext> {
  return {
    onResultProcess({ result, resultProcessor }) {
      if (resultProcessor || typeof (result as Partial<AsyncIterable<unknown>>)[Symbol.asyncIterator] !== 'function')
        return;
      const stream = (result as AsyncIterable<unknown>)[Symbol.asyncIterator]();
      void (async () => {
        await stream.return?.();
      })().catch(() => undefined);
    },
  };
}
