import { GraphQLError } from 'graphql';
import type { YogaMaskedErrorOpts } from 'graphql-yoga';
import type { Logger } from 'pino';
import { DomainError, ErrorCode } from '../../errors.js';

/**
 * Errors a client can act on (DomainError, GraphQL syntax/validation errors) pass with a
 * code; anything else is logged with its stack and answered as INTERNAL_SERVER_ERROR, so a
 * database or driver message never reaches a client.
 */
export function maskErrors(log: Logger): YogaMaskedErrorOpts {
  return {
    errorMessage: 'Unexpected error.',
    maskError(error) {
      if (error instanceof GraphQLError) {
        const original = error.originalError;
        if (original instanceof DomainError) return error;
        const variableError = asVariableError(error);
        if (variableError) return variableError;
        if (!original || (original instanceof GraphQLError && !original.originalError)) return withDefaultCode(error);
        log.error({ err: original, path: error.path }, 'unexpected error in resolver');
      } else {
        log.error({ err: error }, 'unexpected error');
      }
      return new GraphQLError('Unexpected error.', {
        path: error instanceof GraphQLError ? error.path : undefined,
        extensions: { code: ErrorCode.INTERNAL_SERVER_ERROR },
      });
    },
  };
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

/** Parse and validation errors get a code too, so clients can switch on every error. */
function withDefaultCode(error: GraphQLError): GraphQLError {
  if (error.extensions?.code) return error;
  return new GraphQLError(error.message, {
    nodes: error.nodes,
    source: error.source,
    positions: error.positions,
    path: error.path,
    originalError: error.originalError,
    extensions: { ...error.extensions, code: 'GRAPHQL_VALIDATION_FAILED' },
  });
}
