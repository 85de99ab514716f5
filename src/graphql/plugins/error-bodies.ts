import { GraphQLError } from 'graphql';
import { type Plugin, processRegularResult } from 'graphql-yoga';
import type { RequestContext } from '../context.js';
import { resultMediaType } from '../result-media-type.js';

/**
 * Every error answer of the GraphQL endpoint is a GraphQL error document. Yoga answers a POST
 * whose content type it has no parser for with a bare 415; this gives it the document
 * (`extensions.code` BAD_REQUEST), formatted by Yoga's own result processor, in the media type
 * Yoga would answer a result with for the request's Accept (resultMediaType), or
 * application/json when Yoga would pick none (what every GraphQL client reads).
 */
export function useErrorBodies(): Plugin<RequestContext> {
  return {
    onResponse(payload) {
      const { request, response, fetchAPI } = payload;
      if (response.status !== 415 || response.body !== null) return;
      const error = new GraphQLError('Unsupported media type: send the request as application/json.', {
        extensions: { code: 'BAD_REQUEST', http: { status: 415 } },
      });
      const mediaType = resultMediaType(request.headers.get('accept') ?? undefined) ?? 'application/json';
      const answer = processRegularResult({ errors: [error] }, fetchAPI, mediaType);
      // Yoga's CORS headers, if any, stay.
      response.headers.forEach((value, name) => {
        if (name !== 'content-type' && name !== 'content-length') answer.headers.set(name, value);
      });
      payload.setResponse(answer);
    },
  };
}
