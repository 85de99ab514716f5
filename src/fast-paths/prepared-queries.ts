import {
  type DocumentNode,
  type ExecutionResult,
  getOperationAST,
  GraphQLError,
  OperationTypeNode,
  type GraphQLSchema,
  type Source,
} from 'graphql';
import { type CompiledQuery, compileQuery, isCompiledQuery } from 'graphql-jit';
import type { Plugin, YogaInitialContext } from 'graphql-yoga';
import { type LRUCache, lruCache } from '../cache/lru.js';
import type { RequestContext } from '../graphql/context.js';
import { isIntrospectionOnly } from '../graphql/plugins/require-viewer.js';

/** Longest query text worth remembering (dashboards' hot queries are a few hundred bytes). */
export const MAX_PREPARED_QUERY_LENGTH = 8_192;

/** A query or mutation document known to pass every check, compiled on first use. */
export interface PreparedQuery {
  readonly document: DocumentNode;
  readonly operationName: string | null;
  readonly type: 'query' | 'mutation';
  /** Runs without a token (useRequireViewer lets introspection through). */
  readonly introspectionOnly: boolean;
  /** undefined: not compiled yet; null: graphql-jit cannot compile it (always use Yoga). */
  compiled?: CompiledQuery | null;
}

/**
 * Query documents that went through Yoga's full pipeline once — parse with the token limit,
 * validation with every rule (graphql-armor's depth, cost, alias and directive limits,
 * disabled introspection) — keyed by their exact text and operation name. All of those checks
 * depend only on the text and the schema, so a document listed here would pass them again:
 * the prepared path (prepared-query-path.ts) runs it without repeating them, compiled
 * by graphql-jit (same resolvers, a tenth of graphql-js's per-request execution cost here).
 * Queries and mutations are listed (graphql-jit runs a mutation's root fields one after
 * another, as the spec requires); subscriptions always take the full path.
 *
 * Bounded, least recently used first out, so clients that send ever-new texts (ids inlined
 * instead of variables) cannot grow it.
 */
export class PreparedQueries {
  private readonly entries: LRUCache<string, PreparedQuery>;

  constructor(
    private readonly schema: GraphQLSchema,
    maxEntries = 500,
  ) {
    this.entries = lruCache({ max: maxEntries });
  }

  get size(): number {
    return this.entries.size;
  }

  get(query: string, operationName: string | null): PreparedQuery | undefined {
    const key = keyOf(query, operationName);
    return this.entries.get(key);
  }

  /** Called only with documents that passed parsing and validation. */
  remember(query: string, operationName: string | null, document: DocumentNode): void {
    if (query.length > MAX_PREPARED_QUERY_LENGTH) return;
    const type = getOperationAST(document, operationName)?.operation;
    if (type !== OperationTypeNode.QUERY && type !== OperationTypeNode.MUTATION) return;
    const key = keyOf(query, operationName);
    if (this.entries.has(key)) return;
    this.entries.set(key, {
      document,
      operationName,
      type,
      introspectionOnly: isIntrospectionOnly(document, operationName),
    });
  }

  /**
   * Executes a prepared operation; null when graphql-jit cannot compile it (the caller hands
   * the request to Yoga). Variables are coerced by the compiled query before any resolver
   * runs: a result with errors and no `data` means they were refused and nothing ran (so a
   * mutation handed to Yoga then cannot run twice).
   */
  async execute(
    entry: PreparedQuery,
    context: RequestContext,
    variables: Record<string, unknown> | undefined,
  ): Promise<ExecutionResult | null> {
    if (entry.compiled === undefined) {
      const compiled = compileQuery(this.schema, entry.document, entry.operationName ?? undefined);
      entry.compiled = isCompiledQuery(compiled) ? compiled : null;
    }
    if (!entry.compiled) return null;
    const result = await entry.compiled.query(undefined, context, variables);
    if (!result.errors?.length) return result;
    // As graphql-js builds it (errors first), with graphql-js errors: graphql-jit's own error
    // objects carry line/column but not the source positions Yoga serialises locations from.
    const source = entry.document.loc?.source;
    const errors = result.errors.map((e) => asGraphQLJsError(e, source));
    return 'data' in result ? { errors, data: result.data } : { errors };
  }
}

function asGraphQLJsError(error: GraphQLError, source: Source | undefined): GraphQLError {
  const positions = source && error.locations?.map((l) => positionOf(source.body, l.line, l.column));
  return new GraphQLError(error.message, {
    source: positions?.length ? source : undefined,
    positions,
    path: error.path,
    originalError: error.originalError ?? originalOf(error),
    extensions: error.extensions,
  });
}

/**
 * graphql-jit reports a value that failed to serialise (a scalar's serialize threw) by its
 * message alone, where graphql-js keeps the thrown error: give it one back, so the masker
 * hides and logs it as unexpected. graphql-js's own null-violation errors have none. By the
 * message, because graphql-jit (0.8, getSerializer's onError) passes nothing else on.
 */
function originalOf(error: GraphQLError): Error | undefined {
  if (!error.path || error.message.startsWith('Cannot return null for non-nullable field')) return undefined;
  return new Error(error.message);
}

/** Offset of a 1-based line and column in a document's text (line ends as graphql-js counts them). */
function positionOf(body: string, line: number, column: number): number {
  let offset = 0;
  const lineEnd = /\r\n|[\n\r]/g;
  for (let l = 1; l < line; l++) {
    if (!lineEnd.exec(body)) break;
    offset = lineEnd.lastIndex;
  }
  return offset + column - 1;
}

function keyOf(query: string, operationName: string | null): string {
  // NUL cannot appear in an operation name, so the key is unambiguous.
  return `${operationName ?? ''}\u0000${query}`;
}

/**
 * Learns prepared queries from operations Yoga executes. onExecute runs only after the
 * document parsed and validated, so what it sees has passed every limit. Only from
 * authenticated requests: tokenless clients (introspection needs none) must not be able to
 * push dashboards' documents out of the bounded list.
 */
export function useLearnPreparedQueries(
  prepared: PreparedQueries,
): Plugin<RequestContext & Partial<YogaInitialContext>> {
  return {
    onExecute({ args }) {
      if (!args.contextValue.viewer) return;
      // Yoga's initial context (YogaInitialContext.params) is part of every operation's context.
      const { params } = args.contextValue;
      if (typeof params?.query !== 'string') return;
      prepared.remember(params.query, params.operationName ?? null, args.document as DocumentNode);
    },
  };
}
