import { type DocumentNode, getOperationAST, type GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { Metrics } from '../../observability/metrics.js';
import type { RequestContext } from '../context.js';
import { onStreamEnd } from '../shared-stream.js';

/**
 * Per operation: a duration and outcome metric, error codes, and one access-log line with
 * the request id (never variables). Subscriptions count as active while they stream.
 */
export function useObserveOperations(metrics: Metrics): Plugin<RequestContext> {
  return {
    onExecute({ args }) {
      const started = performance.now();
      const operationName = (args.operationName as string | null | undefined) ?? null;
      const type = getOperationAST(args.document as DocumentNode, operationName)?.operation ?? 'unknown';
      return {
        onExecuteDone({ result }) {
          if (!('errors' in result) && !('data' in result)) return; // incremental delivery: not used here
          recordOperation(metrics, args.contextValue, { type, operationName, errors: result.errors, started });
        },
      };
    },
    onSubscribe() {
      return {
        onSubscribeResult({ result }) {
          if (!(Symbol.asyncIterator in result)) return;
          metrics.activeSubscriptions.inc();
          return onStreamEnd(result, () => metrics.activeSubscriptions.dec());
        },
      };
    },
  };
}

/**
 * The duration and outcome metric, error codes and the access-log line of one executed
 * operation (also called by the prepared-query path, which executes without envelop).
 * `errors` are the masked ones, so codes are those the client sees.
 */
export function recordOperation(
  metrics: Metrics,
  ctx: RequestContext,
  op: { type: string; operationName: string | null; errors: readonly GraphQLError[] | undefined; started: number },
): void {
  const errors = op.errors ?? [];
  const seconds = (performance.now() - op.started) / 1000;
  metrics.graphqlOperations.observe({ type: op.type, outcome: errors.length ? 'error' : 'ok' }, seconds);
  const codes = errors.map((e) =>
    typeof e.extensions?.code === 'string' ? e.extensions.code : 'INTERNAL_SERVER_ERROR',
  );
  for (const code of codes) metrics.graphqlErrors.inc({ code });
  // Checked first: the line's object would be built per operation even at LOG_LEVEL=warn.
  if (!ctx.log.isLevelEnabled('info')) return;
  ctx.log.info(
    {
      requestId: ctx.requestId,
      operation: op.operationName,
      type: op.type,
      ms: Math.round(seconds * 1000),
      user: ctx.viewer?.userId ?? null,
      errors: codes.length ? codes : undefined,
    },
    'graphql operation',
  );
}
