import type { IncomingMessage, ServerResponse } from 'node:http';
import type { GraphQLError } from 'graphql';
import { processRegularResult } from 'graphql-yoga';
import type { Logger } from 'pino';
import { type RequestContext, viewerContext } from '../graphql/context.js';
import type { ErrorMasker } from '../graphql/plugins/mask-errors.js';
import { recordOperation } from '../graphql/plugins/observe-operations.js';
import { unauthenticated } from '../graphql/plugins/require-viewer.js';
import { MAX_PREPARED_QUERY_LENGTH, type PreparedQueries } from './prepared-queries.js';
import type { PvegraphYoga } from '../api/yoga.js';
import type { Services } from '../services.js';
import type { TokenCheck, UnrefusedTokenCheck } from '../auth/authenticate.js';
import { corsHeaders } from '../api/yoga-answers.js';
import { resultMediaType } from '../graphql/result-media-type.js';

/** Bodies above this go straight to Yoga (a prepared query plus its variables is far smaller). */
const MAX_PREPARED_BODY_BYTES = MAX_PREPARED_QUERY_LENGTH + 8_192;

/** Why a request was handed to Yoga (the metric's label values: a small fixed set). */
type HandOverReason = 'not_eligible' | 'not_prepared' | 'unauthenticated' | 'auth_error' | 'invalid_variables';
/** How a request was answered here: run, refused for its token, or for its address's spent budget (429). */
type Answered = 'prepared' | 'refused' | 'rate_limited';

/**
 * A request left for Yoga, with its token check when this path made one (so it is not made
 * twice). An answered request returns `ANSWERED` and allocates nothing for it.
 */
export interface HandOver {
  readonly check: UnrefusedTokenCheck | undefined;
}
export const ANSWERED = 'answered';

/** Answers the request, or tells what Yoga is to handle (the body read is handed along on `req.body`). */
export type PreparedQueryPath = (
  req: IncomingMessage,
  res: ServerResponse,
  requestId: string,
) => Promise<typeof ANSWERED | HandOver>;
const UNCHECKED: HandOver = Object.freeze({ check: undefined });

/** A refused token's answer, as Yoga formats it (see refusalOf). */
interface Refusal {
  status: number;
  headers: Record<string, string>;
  body: string;
  errors: readonly GraphQLError[];
}

export interface PreparedQueryPathOptions {
  yoga: PvegraphYoga;
  prepared: PreparedQueries;
  services: Services;
  log: Logger;
  masker: ErrorMasker;
  maxRequestBodyBytes: number;
  /** The request's token, checked once for this path and Yoga (anonymous-budget.ts); a refusal is answered 429 by it. */
  checkToken: (req: IncomingMessage, res: ServerResponse) => TokenCheck | Promise<TokenCheck>;
}

/**
 * The common case of a dashboard — an authenticated POST of an operation it has sent before — is
 * answered here, without the Fetch-API translation, per-request plugin chain and graphql-js
 * execution of Yoga's HTTP handling (together ~4× the CPU of a bare Node handler:
 * BENCHMARKS.md, scenario 1). What it keeps is everything that gives the answer its meaning:
 * the document is one Yoga itself has parsed and validated (PreparedQueries), the viewer is
 * checked as Yoga's context factory does, resolvers are the schema's own (run by the query
 * graphql-jit compiled), errors pass the same masker, and the same metrics and access-log
 * line are recorded. A known document sent with a missing or bad token is refused here with
 * the error and status Yoga's useRequireViewer gives it, so a client retrying a revoked
 * token costs no more than one with a valid token.
 *
 * Everything else goes to Yoga, with the body already read handed along: other methods and
 * content types, unknown documents, extensions, introspection without a token, tokens that
 * could not be checked, refused variables (nothing ran; Yoga words the error). A result with
 * errors is formatted by Yoga's own result processor (status code by error kind, internals
 * stripped), so both paths answer byte for byte alike.
 *
 * Returns `ANSWERED`, or a `HandOver` with the token check when one was made.
 */
export function createPreparedQueryPath(opts: PreparedQueryPathOptions): PreparedQueryPath {
  const { yoga, prepared, services, log, masker } = opts;
  const { metrics } = services;
  const maxBody = Math.min(MAX_PREPARED_BODY_BYTES, opts.maxRequestBodyBytes);
  const count = {
    prepared: metrics.preparedRequests.labels({ path: 'prepared' }),
    refused: metrics.preparedRequests.labels({ path: 'refused' }),
    rate_limited: metrics.preparedRequests.labels({ path: 'rate_limited' }),
    not_eligible: metrics.preparedRequests.labels({ path: 'not_eligible' }),
    not_prepared: metrics.preparedRequests.labels({ path: 'not_prepared' }),
    unauthenticated: metrics.preparedRequests.labels({ path: 'unauthenticated' }),
    auth_error: metrics.preparedRequests.labels({ path: 'auth_error' }),
    invalid_variables: metrics.preparedRequests.labels({ path: 'invalid_variables' }),
  } satisfies Record<HandOverReason | Answered, unknown>;

  /** How the request was answered here, or why it is handed over (with the token check, once made). */
  async function answer(
    req: IncomingMessage,
    raw: Buffer,
    mediaType: string,
    requestId: string,
    res: ServerResponse,
  ): Promise<Answered | HandOverReason | (HandOver & { handover: HandOverReason })> {
    const headers = req.headers;
    const params = graphqlParamsOf(raw);
    if (!params) return 'not_eligible';
    const entry = prepared.get(params.query, params.operationName);
    if (!entry) return 'not_prepared';
    const pending = opts.checkToken(req, res);
    const check = pending instanceof Promise ? await pending : pending; // cached: no extra tick
    if (check.kind === 'refused') return 'rate_limited'; // answered 429 by the check
    // The token could not be checked (database down): nothing has run; Yoga answers it
    // (masked, with its status) exactly as for a request it sees first.
    if (check.kind === 'unchecked') return { handover: 'auth_error', check };
    const started = performance.now();
    const origin = headers.origin;
    if (check.kind === 'anonymous') {
      // Refused here as useRequireViewer refuses it in Yoga (same error, same 401): a client
      // with a revoked or mistyped token would otherwise cost Yoga's whole pipeline per request.
      if (entry.introspectionOnly) return { handover: 'unauthenticated', check };
      const { authFailure } = check;
      const refusal = await refusalOf(authFailure, mediaType);
      const context: RequestContext = { services, log, requestId, viewer: null, authFailure };
      recordOperation(metrics, context, {
        type: entry.type,
        operationName: params.operationName,
        errors: refusal.errors,
        started,
      });
      res
        .writeHead(
          refusal.status,
          origin === undefined ? refusal.headers : { ...refusal.headers, ...corsHeaders(headers) },
        )
        .end(refusal.body);
      return 'refused';
    }

    const context = viewerContext({ services, log, requestId }, check.viewer);
    const executed = await prepared.execute(entry, context, params.variables);
    if (!executed) return { handover: 'not_prepared', check };
    if (!('data' in executed) || executed.data === undefined) return { handover: 'invalid_variables', check };
    const result = masker.maskResult(executed, requestId);
    recordOperation(metrics, context, {
      type: entry.type,
      operationName: params.operationName,
      errors: result.errors,
      started,
    });

    if (result.errors?.length || result.extensions) {
      // Yoga's own formatting: status code by error kind, internals stripped.
      const response = processRegularResult(result, yoga.fetchAPI, mediaType);
      const out = headersOf(response);
      if (origin !== undefined) Object.assign(out, corsHeaders(headers));
      res.writeHead(response.status, out).end(await response.text());
      return 'prepared';
    }
    const body = JSON.stringify(result);
    const out: Record<string, string | number> = {
      'content-type': `${mediaType}; charset=utf-8`,
      'content-length': Buffer.byteLength(body),
    };
    if (origin !== undefined) Object.assign(out, corsHeaders(headers));
    res.writeHead(200, out).end(body);
    return 'prepared';
  }

  /**
   * The answer to a refused token never changes: Yoga's formatting of each (failure, media
   * type) pair is made once, so a refusal costs no error object, Response or stringify.
   */
  const refusals = new Map<string, Promise<Refusal>>();
  function refusalOf(failure: 'missing' | 'invalid', mediaType: string): Promise<Refusal> {
    const key = `${failure} ${mediaType}`;
    let refusal = refusals.get(key);
    if (!refusal) {
      const errors = [unauthenticated(failure)];
      refusal = (async () => {
        const response = processRegularResult({ errors }, yoga.fetchAPI, mediaType);
        return { status: response.status, headers: headersOf(response), body: await response.text(), errors };
      })();
      refusal.catch(() => refusals.delete(key)); // not kept if it failed: the next one retries
      refusals.set(key, refusal);
    }
    return refusal;
  }

  /** `ANSWERED`, or what Yoga is to handle: the body read is handed along on `req.body`. */
  return async function tryPreparedQuery(
    req: IncomingMessage,
    res: ServerResponse,
    requestId: string,
  ): Promise<typeof ANSWERED | HandOver> {
    const headers = req.headers;
    const length = Number(headers['content-length']);
    const mediaType = req.method === 'POST' ? resultMediaType(headers.accept) : null;
    if (
      !mediaType ||
      !isJsonContentType(headers['content-type']) ||
      !Number.isInteger(length) ||
      length <= 0 ||
      length > maxBody ||
      headers['content-encoding'] !== undefined ||
      // Yoga's CORS answers these with extra headers; leave them to it.
      headers['access-control-request-method'] !== undefined ||
      headers['access-control-request-headers'] !== undefined
    ) {
      count.not_eligible.inc();
      return UNCHECKED;
    }
    const raw = await readBody(req, length);
    if (!raw) return ANSWERED; // the client went away mid-body: nobody to answer
    const outcome = await answer(req, raw, mediaType, requestId, res);
    if (typeof outcome === 'object') {
      count[outcome.handover].inc();
    } else {
      count[outcome].inc();
      if (outcome === 'prepared' || outcome === 'refused' || outcome === 'rate_limited') return ANSWERED;
    }
    // whatwg-node takes an already-read body from `req.body` (as behind a body parser).
    (req as IncomingMessage & { body?: Buffer }).body = raw;
    return typeof outcome === 'object' ? outcome : UNCHECKED;
  };
}

interface PreparedParams {
  query: string;
  operationName: string | null;
  variables: Record<string, unknown> | undefined;
}

/** The GraphQL-over-HTTP body, when it is the plain kind this path serves. */
function graphqlParamsOf(raw: Buffer): PreparedParams | null {
  let body: unknown;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch {
    return null;
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return null;
  const { query, operationName, variables, extensions, ...rest } = body as Record<string, unknown>;
  if (typeof query !== 'string' || Object.keys(rest).length > 0) return null;
  // An empty name selects no operation (Yoga refuses it); it must not share null's entry.
  if (operationName != null && (typeof operationName !== 'string' || operationName === '')) return null;
  if (variables != null && (typeof variables !== 'object' || Array.isArray(variables))) return null;
  // Extensions (persisted-query hashes and the like) are Yoga's to interpret.
  if (extensions != null) return null;
  return {
    query,
    operationName: operationName ?? null,
    variables: (variables as Record<string, unknown> | null) ?? undefined,
  };
}

/** Exactly the test Yoga's JSON body parser applies (graphql-yoga request-parser/utils.js). */
function isJsonContentType(value: string | undefined): boolean {
  const type = value?.split(',')[0];
  return type === 'application/json' || !!type?.startsWith('application/json;');
}

/** A Fetch response's headers as Node's writeHead takes them. */
function headersOf(response: Response): Record<string, string> {
  const out: Record<string, string> = {};
  response.headers.forEach((value, name) => (out[name] = value));
  return out;
}

/** The request body, or null when the client aborted before sending all of it. */
function readBody(req: IncomingMessage, length: number): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let received = 0;
    req.on('data', (chunk: Buffer) => {
      received += chunk.length;
      chunks.push(chunk);
    });
    req.once('end', () =>
      resolve(received === length ? (chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)) : null),
    );
    req.once('error', () => resolve(null));
    req.once('close', () => resolve(null)); // after 'end' this is a no-op: the promise is settled
  });
}
