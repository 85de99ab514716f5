import type { ExecutionResult } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { bearerToken } from '../../auth/api-token.js';
import type { RevocationWatch } from '../../auth/revocation-watch.js';
import { UnauthenticatedError } from '../../errors.js';
import type { RequestContext } from '../context.js';
import { endableStream } from '../endable-stream.js';

type ResultStream = AsyncIterable<ExecutionResult>;

/**
 * An SSE subscription is authenticated once, when its request arrives, and may then stream for
 * days. When its token is revoked, the stream's last event is an UNAUTHENTICATED error and the
 * stream completes (within about 1.2 token cache lifetimes; RevocationWatch), as a revoked
 * token's WebSocket is closed with 4403. WebSocket operations (`transport` 'websocket') are
 * left to the socket's own watch (src/http/graphql-ws-server.ts).
 */
export function useEndRevokedSubscriptions(watch: RevocationWatch, onRevoked?: () => void): Plugin<RequestContext> {
  return {
    onSubscribe({ args }) {
      const ctx = args.contextValue as RequestContext & { request?: Request };
      if (ctx.transport === 'websocket' || !ctx.viewer) return;
      const token = bearerToken(ctx.request?.headers.get('authorization'));
      if (!token) return;
      return {
        onSubscribeResult({ result, setResult }) {
          if (Symbol.asyncIterator in result)
            setResult(endOnRevocation(result as ResultStream, watch, token, onRevoked));
        },
      };
    },
  };
}

/** `stream`, until the token is revoked: then one error result, and done. */
export function endOnRevocation(
  stream: ResultStream,
  watch: RevocationWatch,
  token: string,
  onRevoked?: () => void,
): AsyncGenerator<ExecutionResult, void, void> {
  let unwatch = () => {};
  const endable = endableStream(stream, () => unwatch());
  unwatch = watch.watch(token, {
    revoke() {
      if (endable.end({ errors: [new UnauthenticatedError('The API token has been revoked.')] })) onRevoked?.();
    },
  });
  return endable.stream;
}
