import { GraphQLError } from 'graphql';
import type { YogaMaskedErrorOpts } from 'graphql-yoga';
import type { Logger } from 'pino';
import { DomainError, ErrorCode } from '../../errors.js';

/**
 * Errors a client can act on (DomainError, GraphQL syntax/validation errors) pass unchanged;
 * anything else is logged with its stack and answered as INTERNAL_SERVER_ERROR, so a
 * database or driver message never reaches a client.
 */
export function maskErrors(log: Logger): YogaMaskedErrorOpts {
  return {
    errorMessage: 'Unexpected error.',
    maskError(error) {
      if (error instanceof GraphQLError) {
        const original = error.originalError;
        if (!original || original instanceof DomainError) return withDefaultCode(error);
        if (original instanceof GraphQLError && !original.originalError) return withDefaultCode(error);
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
