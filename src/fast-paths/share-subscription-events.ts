import {
  createSourceEventStream,
  type DocumentNode,
  execute,
  type ExecutionArgs,
  type ExecutionResult,
  getOperationAST,
  GraphQLError,
  OperationTypeNode,
} from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { RequestContext, SubscriptionSink } from '../graphql/context.js';
import type { ErrorMasker } from '../graphql/plugins/mask-errors.js';
import { endHooks, sharedStream } from '../graphql/shared-stream.js';
import { EventStream } from '../vmids/event-stream.js';

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
 * When the transport gives a sink (graphql-ws over ws, see RequestContext.sink) and the source
 * is an EventStream, events skip graphql-ws's per-subscriber loop altogether: each event is
 * handed to every subscriber synchronously, and the shared result is serialised once and
 * written by the sink. graphql-ws still owns the operation (subscribe, complete, errors, the
 * final complete message); its onNext hook does not run for these events (none is set).
 *
 * Non-subscription operations and variable errors go through the default subscribe
 * function, so those answers stay identical.
 */
export function useShareSubscriptionEvents(masker: ErrorMasker): Plugin<RequestContext> {
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
      // Envelop types the subscribe function loosely (any); its answer is passed on as it is.
      const fallback = subscribeFn as (args: ExecutionArgs) => unknown;
      setSubscribeFn(((args: ExecutionArgs) => {
        const operation = getOperationAST(args.document, args.operationName);
        if (!operation || operation.operation !== OperationTypeNode.SUBSCRIPTION) return fallback(args);
        const ctx = args.contextValue as RequestContext | undefined;
        // Masked once per shared result (see useMaskErrors), not once per subscriber.
        const mask = (result: ExecutionResult): ExecutionResult => masker.maskResult(result, ctx?.requestId);
        // Errors of the source stream (a subscriber that fell behind, Redis gone) carry the
        // operation, as graphql-tools reports them, and are masked like any other error.
        const fail = (error: unknown): GraphQLError => {
          const original = error instanceof Error ? error : new Error(String(error));
          return masker.mask(
            new GraphQLError(original.message, { originalError: original, nodes: [operation] }),
            ctx?.requestId,
          );
        };
        const run = (event: unknown): Result => {
          const result = execute({ ...args, rootValue: event }) as Result;
          return isPromiseLike<ExecutionResult>(result) ? Promise.resolve(result).then(mask) : mask(result);
        };
        const key = `${documentId(args.document)}\u0000${args.operationName ?? ''}\u0000${ctx?.viewer?.userId ?? ''}\u0000${JSON.stringify(args.variableValues ?? {})}`;
        const executeEvent = (event: unknown): Result => {
          if (typeof event !== 'object' || event === null) return run(event);
          let perEvent = results.get(event);
          if (!perEvent) results.set(event, (perEvent = new Map<string, Result>()));
          let result = perEvent.get(key);
          if (!result) perEvent.set(key, (result = run(event)));
          return result;
        };
        const started = (source: unknown) => {
          if (ctx?.sink && source instanceof EventStream) return sinkEvents(source, executeEvent, ctx.sink, fail);
          if (isAsyncIterable(source)) return mapEvents(source, executeEvent, fail);
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

const DONE = { value: undefined, done: true } as const;

/** One mapping layer: next() → the shared result of the next event. */
function mapEvents(
  source: AsyncIterable<unknown>,
  map: (event: unknown) => Result,
  fail: (error: unknown) => GraphQLError,
): AsyncGenerator<ExecutionResult, void, void> {
  const iterator = source[Symbol.asyncIterator]();
  const { end, hooks } = endHooks();
  const onValue = (
    step: IteratorResult<unknown>,
  ): IteratorResult<ExecutionResult> | Promise<IteratorResult<ExecutionResult>> => {
    if (step.done) {
      end();
      return step as IteratorResult<ExecutionResult>;
    }
    const result = map(step.value);
    return isPromiseLike(result) ? result.then((value) => ({ value, done: false })) : { value: result, done: false };
  };
  const onError = (error: unknown): never => {
    end();
    throw fail(error);
  };
  return sharedStream(hooks, {
    next: () => iterator.next().then(onValue, onError),
    return: () => {
      end();
      return typeof iterator.return === 'function' ? iterator.return().then(() => DONE) : Promise.resolve(DONE);
    },
    throw: (error: unknown) => {
      end();
      return typeof iterator.throw === 'function'
        ? iterator.throw(error).then(onValue, onError)
        : Promise.reject(error);
    },
  });
}

/** Each shared result serialised once, for all the sinks it goes to. */
const serializedResults = new WeakMap<ExecutionResult, string>();

/** The payload graphql-ws would write for a result: its fields, then the errors. */
function serialize(result: ExecutionResult): string {
  let json = serializedResults.get(result);
  if (json === undefined) {
    const { errors, ...rest } = result;
    json = JSON.stringify(errors ? { ...rest, errors: errors.map((e) => e.toJSON()) } : rest);
    serializedResults.set(result, json);
  }
  return json;
}

/**
 * A subscription whose events go straight from the source to the transport's sink. The stream
 * graphql-ws iterates yields nothing: its first next() settles when the subscription ends
 * (done, or the located error graphql-ws then reports), so graphql-ws's own messages (error,
 * complete) still come after the last event.
 */
function sinkEvents(
  source: EventStream<unknown>,
  map: (event: unknown) => Result,
  sink: SubscriptionSink,
  fail: (error: unknown) => GraphQLError,
): AsyncGenerator<ExecutionResult, void, void> {
  const { end, hooks } = endHooks();
  // Results that are promises (an asynchronous field resolver) are written in event order.
  let queued: Promise<void> | null = null;
  let failure: { error: unknown } | null = null;
  // Returned (the client completed, the socket closed): nothing more is written for this id.
  let closed = false;
  const write = (result: ExecutionResult) => {
    if (!failure && !closed) sink.next(serialize(result));
  };
  const deliver = (event: unknown) => {
    if (failure || closed) return;
    const result = map(event);
    if (!queued && !isPromiseLike<ExecutionResult>(result)) return write(result);
    const link: Promise<void> = (queued ?? Promise.resolve())
      .then(() => result)
      .then(write)
      .catch((error: unknown) => {
        failure ??= { error };
        void source.return();
      })
      .then(() => {
        if (queued === link) queued = null; // back to the synchronous path
      });
    queued = link;
  };
  let running: Promise<IteratorResult<ExecutionResult>> | null = null;
  const run = () =>
    source
      .drain(deliver)
      .then(
        () => queued,
        // Results of the events before the error are written before graphql-ws sends it.
        (error: unknown) => Promise.resolve(queued).then(() => void (failure ??= { error })),
      )
      .then(() => {
        if (failure) throw failure.error;
        end();
        return DONE;
      })
      .catch((error: unknown) => {
        end();
        throw fail(error);
      });
  return sharedStream(hooks, {
    next: () => (running ??= run()),
    return: () => {
      closed = true;
      end();
      return source.return().then(() => DONE);
    },
    throw: (error: unknown) => {
      closed = true;
      end();
      return source.return().then(() => Promise.reject(error));
    },
  });
}

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return typeof (Object(value) as Partial<AsyncIterable<unknown>>)[Symbol.asyncIterator] === 'function';
}

function isPromiseLike<T>(value: unknown): value is PromiseLike<T> {
  return typeof (value as PromiseLike<T> | null)?.then === 'function';
}
