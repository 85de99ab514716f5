import type { Plugin } from 'graphql-yoga';
import { DomainError, ErrorCode } from '../../errors.js';
import type { RequestContext } from '../context.js';
import { onStreamEnd } from '../shared-stream.js';

/**
 * At most `max` streaming subscriptions per user on this instance, over WebSocket and SSE
 * alike (both run through envelop's subscribe). A slot is freed when its stream ends.
 */
export function useSubscriptionCap(max: number): Plugin<RequestContext> {
  const open = new Map<string, number>();
  const release = (userId: string) => {
    const n = (open.get(userId) ?? 1) - 1;
    if (n <= 0) open.delete(userId);
    else open.set(userId, n);
  };
  return {
    onSubscribe({ args, setResultAndStopExecution }) {
      const userId = args.contextValue.viewer?.userId;
      if (!userId) return;
      const current = open.get(userId) ?? 0;
      if (current >= max) {
        setResultAndStopExecution({
          errors: [
            new DomainError(ErrorCode.RATE_LIMITED, `At most ${max} subscriptions per user are allowed at once.`, {
              limit: max,
            }),
          ],
        });
        return;
      }
      open.set(userId, current + 1);
      // A failing stream can report both its end and the error: free the slot once.
      let held = true;
      const releaseOnce = () => {
        if (!held) return;
        held = false;
        release(userId);
      };
      return {
        onSubscribeResult({ result }) {
          if (!(Symbol.asyncIterator in result)) {
            releaseOnce();
            return;
          }
          return onStreamEnd(result, releaseOnce);
        },
        onSubscribeError() {
          releaseOnce();
        },
      };
    },
  };
}
