import { type DocumentNode, Kind, type OperationDefinitionNode, OperationTypeNode } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { UnauthenticatedError } from '../../errors.js';
import type { RequestContext } from '../context.js';

/**
 * Deny by default: an operation reaches resolvers only with a valid token. Introspection-only
 * operations pass, so GraphiQL can load the schema before a token is pasted in. Runs for
 * HTTP and WebSocket operations alike (WebSocket goes through Yoga's envelop too).
 */
export function useRequireViewer(): Plugin<RequestContext> {
  const check = (document: DocumentNode, operationName: string | null | undefined, ctx: RequestContext) => {
    if (ctx.viewer || isIntrospectionOnly(document, operationName)) return null;
    return unauthenticated(ctx.authFailure);
  };
  return {
    onExecute({ args, setResultAndStopExecution }) {
      const error = check(
        args.document as DocumentNode,
        args.operationName as string | null | undefined,
        args.contextValue,
      );
      if (error) setResultAndStopExecution({ errors: [error] });
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      const error = check(
        args.document as DocumentNode,
        args.operationName as string | null | undefined,
        args.contextValue,
      );
      if (error) setResultAndStopExecution({ errors: [error] });
    },
  };
}

/** The error of an operation refused for its token (also raised by the prepared-query path). */
export function unauthenticated(failure: RequestContext['authFailure']): UnauthenticatedError {
  return new UnauthenticatedError(
    failure === 'invalid'
      ? 'The API token is not valid (unknown or revoked).'
      : 'A valid API token is required (Authorization: Bearer <token>).',
  );
}

/** Operations that only introspect may run without a token (GraphiQL loads the schema first). */
export function isIntrospectionOnly(document: DocumentNode, operationName: string | null | undefined): boolean {
  const operations = document.definitions.filter(
    (d): d is OperationDefinitionNode => d.kind === Kind.OPERATION_DEFINITION,
  );
  const operation = operationName ? operations.find((o) => o.name?.value === operationName) : operations[0];
  if (!operation || operation.operation !== OperationTypeNode.QUERY) return false;
  // Conservative: fragments at the root count as "not introspection".
  return operation.selectionSet.selections.every((s) => s.kind === Kind.FIELD && s.name.value.startsWith('__'));
}
