import { GraphQLError } from 'graphql';
import { type Plugin, processRegularResult } from 'graphql-yoga';
import type { RequestContext } from '../context.js';

/**
 * Every error answer of the GraphQL endpoint is a GraphQL error document. Yoga answers a POST
 * whose content type it has no parser for with a bare 415; this gives it the document
 * (`extensions.code` BAD_REQUEST), formatted by Yoga's own result processor. The media type is
 * application/graphql-response+json when the client names it in Accept, else application/json
 * (what every GraphQL client reads).
 */
export function useErrorBodies(): Plugin<RequestContext> {
  return {
    onResponse(payload) {
      const { request, response, fetchAPI } = payload;
      if (response.status !== 415 || response.body !== null) return;
      const error = new GraphQLError('Unsupported media type: send the request as application/json.', {
        extensions: { code: 'BAD_REQUEST', http: { status: 415 } },
      });
      const mediaType = /application\/graphql-response\+json/i.test(request.headers.get('accept') ?? '')
        ? 'application/graphql-response+json'
        : 'application/json';
      const answer = processRegularResult({ errors: [error] }, fetchAPI, mediaType);
      // Yoga's CORS headers, if any, stay.
      response.headers.forEach((value, name) => {
        if (name !== 'content-type' && name !== 'content-length') answer.headers.set(name, value);
      });
      payload.setResponse(answer);
    },
  };
}
