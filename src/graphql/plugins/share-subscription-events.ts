import {
  createSourceEventStream,
  type DocumentNode,
  execute,
  type ExecutionArgs,
  type ExecutionResult,
  getOperationAST,
  GraphQLError,
  type OperationDefinitionNode,
} from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { RequestContext } from '../context.js';

type Result = ExecutionResult | Promise<ExecutionResult>;

/**
 * Fan-out: one event object delivered to many subscriptions (every local subscriber of a
 * user's channel gets the same parsed event) is executed once per distinct operation
 * (document, operation name, variables, user) and the result is shared, instead of once per
 * subscriber. Each subscription also gets a single thin mapping layer over its source stream
 * instead of graphql-tools' mapAsyncIterator + async generator + flattenAsyncIterable.
 *
 * Sharing is safe because a result depends only on the event and the operation: the same
 * event object only ever reaches subscribers of one user (events are per-user channels) and
 * the user is part of the key anyway. Results are never mutated downstream (envelop's error
 * masking and graphql-ws copy them). Envelop's onSubscribeResult hooks (masking, metrics, the
 * subscription cap) still wrap the returned stream as before.
 *
 * Non-subscription operations and variable errors go through the default subscribe
 * function, so those answers stay identical.
 */
export function useShareSubscriptionEvents(): Plugin<RequestContext> {
  const results = new WeakMap<object, Map<string, Result>>();
  const documentIds = new WeakMap<DocumentNode, number>();
  let nextDocumentId = 1;
  const documentId = (doc: DocumentNode) => {
    let id = documentIds.get(doc);
    if (id === undefined) documentIds.set(doc, (id = nextDocumentId++));
    return id;
  };

  return {
    onSubscribe({ subscribeFn, setSubscribeFn }) {
      const fallback = subscribeFn;
      setSubscribeFn(((args: ExecutionArgs) => {
        const operation = getOperationAST(args.document, args.operationName);
        if (!operation || operation.operation !== 'subscription') return fallback(args);
        const ctx = args.contextValue as RequestContext | undefined;
        const key = `${documentId(args.document)}\u0000${args.operationName ?? ''}\u0000${ctx?.viewer?.userId ?? ''}\u0000${JSON.stringify(args.variableValues ?? {})}`;
        const executeEvent = (event: unknown): Result => {
          if (typeof event !== 'object' || event === null) return execute({ ...args, rootValue: event }) as Result;
          let perEvent = results.get(event);
          if (!perEvent) results.set(event, (perEvent = new Map()));
          let result = perEvent.get(key);
          if (!result) perEvent.set(key, (result = execute({ ...args, rootValue: event }) as Result));
          return result;
        };
        const started = (source: unknown) => {
          if (isAsyncIterable(source)) return mapEvents(source, executeEvent, operation);
          // The subscribe resolver failed (located errors, as graphql-tools reports them):
          // answer that. Other errors (variables) come from the default path unchanged.
          const errors = (source as ExecutionResult).errors;
          if (errors?.length && errors.every((e) => e.path)) return source as ExecutionResult;
          return fallback(args);
        };
        let source: unknown;
        try {
          source = createSourceEventStream(args);
        } catch {
          return fallback(args);
        }
        return isPromiseLike(source) ? Promise.resolve(source).then(started) : started(source);
      }) as typeof subscribeFn);
    },
  };
}

/** One mapping layer: next() → the shared result of the next event. */
function mapEvents(
  source: AsyncIterable<unknown>,
  map: (event: unknown) => Result,
  operation: OperationDefinitionNode,
): AsyncGenerator<ExecutionResult, void, void> {
  const iterator = source[Symbol.asyncIterator]();
  const onValue = (step: IteratorResult<unknown>): IteratorResult<ExecutionResult> | Promise<IteratorResult<ExecutionResult>> => {
    if (step.done) return step as IteratorResult<ExecutionResult>;
    const result = map(step.value);
    return isPromiseLike(result) ? result.then((value) => ({ value, done: false })) : { value: result, done: false };
  };
  // Errors of the source stream (a subscriber that fell behind, Redis gone) carry the
  // operation, as graphql-tools reports them; the original stays for error masking.
  const onError = (error: unknown): never => {
    const original = error instanceof Error ? error : new Error(String(error));
    throw new GraphQLError(original.message, { originalError: original, nodes: [operation] });
  };
  const gen: AsyncGenerator<ExecutionResult, void, void> = {
    next: () => iterator.next().then(onValue, onError),
    return: () =>
      typeof iterator.return === 'function'
        ? iterator.return().then(() => ({ value: undefined, done: true }) as const)
        : Promise.resolve({ value: undefined, done: true } as const),
    throw: (error: unknown) => (typeof iterator.throw === 'function' ? iterator.throw(error).then(onValue, onError) : Promise.reject(error)),
    [Symbol.asyncIterator]() {
      return this;
    },
    [Symbol.asyncDispose]() {
      return gen.return().then(() => undefined);
    },
  } as AsyncGenerator<ExecutionResult, void, void>;
  return gen;
}

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return typeof Object(value)[Symbol.asyncIterator] === 'function';
}

function isPromiseLike<T>(value: unknown): value is PromiseLike<T> {
  return typeof (value as PromiseLike<T> | null)?.then === 'function';
}
