import { EnvelopArmorPlugin } from '@escape.tech/graphql-armor';
import {
  type DocumentNode,
  getIntrospectionQuery,
  GraphQLError,
  stripIgnoredCharacters,
  type ValidationContext,
} from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { RequestContext } from '../context.js';

export interface QueryLimits {
  maxDepth: number;
  maxAliases: number;
  maxTokens: number;
  maxDirectives: number;
  maxCost: number;
}

/** The limits checked while validating (maxTokens is checked by the parser). */
type ValidationLimit = 'maxDepth' | 'maxAliases' | 'maxDirectives' | 'maxCost';

/**
 * graphql-armor's limits, each refusal reported as the validation error it is:
 * - reported, not thrown (armor throws by default), so Yoga sees a failed validation and answers
 *   400 to clients that accept application/graphql-response+json (GraphQL over HTTP; 200 stays
 *   for application/json, as the spec allows), and every limit a document breaks is checked;
 * - armor's wording without its "Syntax Error: " prefix (the document parsed fine), with
 *   `extensions.code` GRAPHQL_VALIDATION_FAILED and `extensions.limit` naming the limit;
 * - a too-deep document is told as a depth overrun only: its cost grows with its depth, so the
 *   cost overrun armor checks first would name the symptom;
 * - the depth limit applies to introspection too (a `__schema { types { fields { type { ofType
 *   …` chain is as costly as any), except to the standard introspection query (see
 *   isStandardIntrospectionQuery) GraphiQL loads the schema with, whose type references nest 9
 *   deep. Introspection is not charged by the cost limit (armor's ignoreIntrospection).
 */
export function useQueryLimits(
  limits: QueryLimits,
  opts: { fieldSuggestions: boolean },
): {
  armor: Plugin<RequestContext>;
  depthBeforeCost: Plugin<RequestContext>;
  tokenLimitWording: Plugin<RequestContext>;
} {
  const reportAs =
    (limit: ValidationLimit) =>
    (context: ValidationContext | null, rejection: GraphQLError): void => {
      if (!context) return;
      if (limit === 'maxDepth' && isStandardIntrospectionQuery(context.getDocument())) return;
      context.reportError(
        new GraphQLError(rejection.message.replace(/^Syntax Error: /, ''), {
          extensions: { code: 'GRAPHQL_VALIDATION_FAILED', limit },
        }),
      );
    };
  const reported = (limit: ValidationLimit) => ({ propagateOnRejection: false, onReject: [reportAs(limit)] });
  const armor = EnvelopArmorPlugin({
    maxDepth: { n: limits.maxDepth, ignoreIntrospection: false, flattenFragments: true, ...reported('maxDepth') },
    maxAliases: { n: limits.maxAliases, ...reported('maxAliases') },
    maxTokens: { n: limits.maxTokens },
    maxDirectives: { n: limits.maxDirectives, ...reported('maxDirectives') },
    costLimit: { maxCost: limits.maxCost, ignoreIntrospection: true, ...reported('maxCost') },
    // "Did you mean …?" would hand out the schema that introspection hides.
    blockFieldSuggestion: { enabled: !opts.fieldSuggestions },
  }) as Plugin<RequestContext>;
  const depthBeforeCost: Plugin<RequestContext> = {
    onValidate:
      () =>
      ({ result: errors, setResult }) => {
        const result = errors as readonly GraphQLError[];
        if (result.some((e) => e.extensions?.['limit'] === 'maxDepth'))
          setResult(result.filter((e) => e.extensions?.['limit'] !== 'maxCost'));
      },
  };
  // armor's token limit runs inside the parser (it stops at the first token over the limit)
  // and throws "Syntax Error: Token limit of N exceeded.": told here like the other limits,
  // without the prefix (nothing was malformed) and naming the limit.
  const tokenLimitWording: Plugin<RequestContext> = {
    onParse({ parseFn, setParseFn }) {
      setParseFn((source, options) => {
        try {
          return parseFn(source, options) as DocumentNode;
        } catch (err) {
          if (err instanceof GraphQLError && TOKEN_LIMIT_MESSAGE.test(err.message)) {
            throw new GraphQLError(err.message.replace(/^Syntax Error: /, ''), {
              extensions: { code: 'GRAPHQL_PARSE_FAILED', limit: 'maxTokens' },
            });
          }
          throw err;
        }
      });
    },
  };
  return { armor, depthBeforeCost, tokenLimitWording };
}

/** armor's refusal of a document over the token limit (exposeLimits on, its default). */
const TOKEN_LIMIT_MESSAGE = /^Syntax Error: Token limit of \d+ exceeded\.$/;

/**
 * Whether `document` is, token for token, a query graphql-js's getIntrospectionQuery writes
 * (named IntrospectionQuery, default type depth, any of its options), also without
 * `subscriptionType { name }` (GraphiQL 5 retries that way when the first answer has no
 * data). GraphiQL 5 sends getIntrospectionQuery({ inputValueDeprecation, schemaDescription });
 * the other options are other tools' (codegen, IDE plugins) choices of the same query. Only
 * checked for a document over the depth limit.
 */
function isStandardIntrospectionQuery(document: DocumentNode): boolean {
  const text = document.loc?.source.body;
  if (text === undefined || !text.includes('IntrospectionQuery')) return false;
  let stripped: string;
  try {
    stripped = stripIgnoredCharacters(text);
  } catch {
    return false;
  }
  return standardIntrospectionQueries().has(stripped);
}

const INTROSPECTION_OPTIONS = [
  'descriptions',
  'specifiedByUrl',
  'directiveIsRepeatable',
  'schemaDescription',
  'inputValueDeprecation',
  'experimentalDirectiveDeprecation',
  'oneOf',
] as const;
let standard: Set<string> | undefined;

/** Every variant, without ignored characters; made once, on the first document over the depth limit (~10 ms). */
function standardIntrospectionQueries(): Set<string> {
  if (standard) return standard;
  standard = new Set();
  for (let bits = 0; bits < 1 << INTROSPECTION_OPTIONS.length; bits++) {
    const options = Object.fromEntries(INTROSPECTION_OPTIONS.map((name, i) => [name, (bits & (1 << i)) !== 0]));
    const query = getIntrospectionQuery(options);
    standard.add(stripIgnoredCharacters(query));
    standard.add(stripIgnoredCharacters(query.replace('subscriptionType { name }', '')));
  }
  return standard;
}
