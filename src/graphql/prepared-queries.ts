import { type DocumentNode, getOperationAST } from 'graphql';
import type { GraphQLParams, Plugin } from 'graphql-yoga';
import type { RequestContext } from './context.js';

/** Longest query text worth remembering (dashboards' hot queries are a few hundred bytes). */
export const MAX_PREPARED_QUERY_LENGTH = 8_192;

/**
 * Query documents that went through Yoga's full pipeline once — parse with the token limit,
 * validation with every rule (graphql-armor's depth, cost, alias and directive limits,
 * disabled introspection) — keyed by their exact text and operation name. All of those checks
 * depend only on the text and the schema, so a document listed here would pass them again:
 * the prepared path (http/prepared-query-path.ts) executes it without repeating them.
 * Only queries are listed: mutations and subscriptions always take the full path.
 *
 * Bounded, least recently used first out, so clients that send ever-new texts (ids inlined
 * instead of variables) cannot grow it.
 */
export class PreparedQueries {
  private readonly entries = new Map<string, DocumentNode>();

  constructor(private readonly maxEntries = 500) {}

  get size(): number {
    return this.entries.size;
  }

  get(query: string, operationName: string | null): DocumentNode | undefined {
    const key = keyOf(query, operationName);
    const document = this.entries.get(key);
    if (document && this.entries.size > 1) {
      // Most recently used goes last (Map keeps insertion order).
      this.entries.delete(key);
      this.entries.set(key, document);
    }
    return document;
  }

  /** Called only with documents that passed parsing and validation. */
  remember(query: string, operationName: string | null, document: DocumentNode): void {
    if (query.length > MAX_PREPARED_QUERY_LENGTH) return;
    if (getOperationAST(document, operationName)?.operation !== 'query') return;
    const key = keyOf(query, operationName);
    if (this.entries.has(key)) return;
    if (this.entries.size >= this.maxEntries) this.entries.delete(this.entries.keys().next().value!);
    this.entries.set(key, document);
  }
}

function keyOf(query: string, operationName: string | null): string {
  // NUL cannot appear in an operation name, so the key is unambiguous.
  return `${operationName ?? ''}\u0000${query}`;
}

/**
 * Learns prepared queries from operations Yoga executes. onExecute runs only after the
 * document parsed and validated, so what it sees has passed every limit.
 */
export function useLearnPreparedQueries(prepared: PreparedQueries): Plugin<RequestContext> {
  return {
    onExecute({ args }) {
      const params = (args.contextValue as { params?: GraphQLParams }).params;
      if (typeof params?.query !== 'string') return;
      prepared.remember(params.query, params.operationName ?? null, args.document);
    },
  };
}
