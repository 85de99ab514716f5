import { type ExecutionResult, GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { Logger } from 'pino';
import { isDatabaseUnavailable } from '../../db/prisma-errors.js';
import { DomainError, ErrorCode } from '../../errors.js';
import type { RequestContext } from '../context.js';
import { isSharedStream } from '../shared-stream.js';

/** Decides what a client sees of an error, and logs what it hides. */
export interface ErrorMasker {
  /**
   * Errors a client can act on (DomainError, GraphQL syntax/validation errors) pass with a
   * code; anything else is logged with its stack (and the request id when known) and answered
   * as INTERNAL_SERVER_ERROR, so a database or driver message never reaches a client.
   * Idempotent: an error this masker returned comes back unchanged (and is not logged again).
   */
  mask: (error: unknown, requestId?: string) => GraphQLError;
  /** The result with every error masked (the same object when it has none). */
  maskResult: (result: ExecutionResult, requestId?: string) => ExecutionResult;
}

export function createErrorMasker(log: Logger): ErrorMasker {
  const answered = new WeakSet<GraphQLError>();
  const databaseUnavailable = (cause: unknown, path: GraphQLError['path'], at: object): GraphQLError => {
    log.warn(
      { ...at, err: { message: (cause as Error).message, code: (cause as { code?: string }).code }, path },
      'database unavailable',
    );
    return new GraphQLError('The database is unreachable right now; try again shortly.', {
      path,
      extensions: { code: ErrorCode.SERVICE_UNAVAILABLE },
    });
  };
  const decide = (error: unknown, requestId: string | undefined): GraphQLError => {
    const at = requestId ? { requestId } : {};
    if (error instanceof GraphQLError) {
      const original = error.originalError;
      if (original instanceof DomainError) return error;
      const variableError = asVariableError(error);
      if (variableError) return variableError;
      const requestError = asRequestError(error);
      if (requestError) return requestError;
      if (isDatabaseUnavailable(original)) return databaseUnavailable(original, error.path, at);
      if (!original || (original instanceof GraphQLError && !original.originalError))
        return withCode(error, 'GRAPHQL_VALIDATION_FAILED');
      log.error({ ...at, err: original, path: error.path }, 'unexpected error in resolver');
    } else if (isDatabaseUnavailable(error)) {
      // Raised outside any resolver: checking the request's token while PostgreSQL is down.
      return databaseUnavailable(error, undefined, at);
    } else {
      log.error({ ...at, err: error }, 'unexpected error');
    }
    return new GraphQLError('Unexpected error.', {
      path: error instanceof GraphQLError ? error.path : undefined,
      extensions: { code: ErrorCode.INTERNAL_SERVER_ERROR },
    });
  };
  const mask = (error: unknown, requestId?: string): GraphQLError => {
    if (error instanceof GraphQLError && answered.has(error)) return error;
    const masked = decide(error, requestId);
    answered.add(masked);
    return masked;
  };
  return {
    mask,
    maskResult: (result, requestId) =>
      result.errors?.length ? { ...result, errors: result.errors.map((e) => mask(e, requestId)) } : result,
  };
}

/**
 * The masking of every error that reaches a client, in place of Yoga's built-in masking
 * plugin (`maskedErrors: false`): operation results, subscription events and errors, context
 * errors, and — in onResultProcess — whatever failed before an operation started (a malformed
 * request, a syntax error), which Yoga hands over unmasked. Two differences from Yoga's:
 * - results are masked where the operation's context is at hand, so what the masker logs
 *   names the request, and the plugins after this one (metrics, access log) see the codes the
 *   client gets;
 * - a shared subscription stream (share-subscription-events) is masked once per event and
 *   operation, not wrapped per subscriber (which cost more than anything else per delivery).
 */
export function useMaskErrors(masker: ErrorMasker): Plugin<RequestContext> {
  const { maskResult } = masker;
  return {
    onPluginInit({ registerContextErrorHandler }) {
      registerContextErrorHandler(({ context, error, setError }) =>
        setError(masker.mask(error, (context as { requestId?: string }).requestId)),
      );
    },
    onExecute() {
      return {
        onExecuteDone({ args, result, setResult }) {
          if (!('errors' in result) || !result.errors?.length) return;
          setResult(maskResult(result, (args.contextValue as RequestContext).requestId));
        },
      };
    },
    onSubscribe({ args }) {
      const requestId = (args.contextValue as RequestContext | undefined)?.requestId;
      return {
        onSubscribeResult({ result, setResult }) {
          if (!(Symbol.asyncIterator in result)) {
            setResult(maskResult(result, requestId));
            return;
          }
          if (isSharedStream(result)) return;
          return { onNext: ({ result: next, setResult: setNext }) => setNext(maskResult(next, requestId)) };
        },
        onSubscribeError({ error, setError }) {
          // A client that went away (SSE) is not an error to mask or log (Yoga's own test).
          if (isAbortError(error)) return;
          setError(masker.mask(error, requestId));
        },
      };
    },
    onResultProcess(payload) {
      const { result, serverContext } = payload;
      const setResult = (r: typeof result) => payload.setResult(r);
      if (Symbol.asyncIterator in result) return; // streams: masked per event above
      const requestId = (serverContext as { requestId?: string } | undefined)?.requestId;
      setResult(
        Array.isArray(result)
          ? result.map((r) => maskResult(r, requestId))
          : maskResult(result as ExecutionResult, requestId),
      );
    },
  };
}

/** What Yoga treats as a request aborted by its client (graphql-yoga error.js, not exported). */
function isAbortError(error: unknown): boolean {
  return (
    typeof error === 'object' &&
    error !== null &&
    error.constructor?.name === 'DOMException' &&
    ((error as Error).name === 'AbortError' || (error as Error).name === 'TimeoutError')
  );
}

/**
 * graphql-js words a bad variable as `Variable "$v" got invalid value <the whole value> …`,
 * which would echo a secret a client sent (a token secret in a malformed input) back into
 * responses and logs. Keep the path and the reason, drop the value, and say BAD_USER_INPUT.
 */
function asVariableError(error: GraphQLError): GraphQLError | null {
  const match = /^Variable "\$([^"]+)" got invalid value/.exec(error.message);
  if (!match) return null;
  const reason = error.originalError?.message ?? 'invalid value';
  const head = error.message.endsWith(`; ${reason}`) ? error.message.slice(0, -(reason.length + 2)) : '';
  const at = /at "([^"]+)"$/.exec(head)?.[1] ?? match[1]!;
  // A missing field is reported on its parent object: name the field itself.
  const missing = /^Field "([^"]+)" of required type/.exec(reason)?.[1];
  const field = missing ? `${at}.${missing}` : at;
  return new GraphQLError(`Variable "$${match[1]}" has an invalid value at "${field}": ${reason}`, {
    nodes: error.nodes,
    source: error.source,
    positions: error.positions,
    extensions: { code: ErrorCode.BAD_USER_INPUT, fields: { [field]: reason } },
  });
}

/**
 * Yoga's answers to a malformed HTTP request (not JSON, no query, a mutation over GET, no CSRF
 * header…) carry their own codes or none, and the invalid-JSON one quotes the whole body —
 * secrets included — in extensions.originalError. Keep the message and the HTTP status and
 * headers (e.g. `Allow: POST` on a 405), answer BAD_REQUEST, drop the quote.
 */
function asRequestError(error: GraphQLError): GraphQLError | null {
  const http = error.extensions?.http;
  const status = http?.status ?? 0;
  const yogaCode = error.extensions?.code;
  const isRequestError =
    yogaCode === 'BAD_REQUEST' ||
    yogaCode === 'OPERATION_RESOLUTION_FAILURE' ||
    // Uncoded 4xx about the request, not the document: documents' errors have locations.
    (yogaCode === undefined &&
      status >= 400 &&
      status < 500 &&
      !error.locations?.length &&
      !error.message.startsWith('Syntax Error'));
  if (!isRequestError) return null;
  return new GraphQLError(error.message, {
    extensions: {
      code: ErrorCode.BAD_REQUEST,
      http: { status: status || 400, ...(http?.headers ? { headers: http.headers } : {}) },
    },
  });
}

/** Parse and validation errors get a code too, so clients can switch on every error. */
export function withCode(error: GraphQLError, code: string): GraphQLError {
  if (error.extensions?.code) return error;
  return new GraphQLError(error.message, {
    nodes: error.nodes,
    source: error.source,
    positions: error.positions,
    path: error.path,
    originalError: error.originalError,
    extensions: { ...error.extensions, code },
  });
}
