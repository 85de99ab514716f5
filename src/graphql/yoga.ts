import { randomUUID } from 'node:crypto';
import { GraphQLError } from 'graphql';
import { createYoga, type YogaLogger, type YogaServerInstance } from 'graphql-yoga';
import type { Logger } from 'pino';
import { bearerToken } from '../auth/api-token.js';
import type { Viewer } from '../auth/auth-service.js';
import type { Services } from '../services.js';
import type { RequestContext } from './context.js';
import { maskErrors } from './plugins/mask-errors.js';
import { useRequireViewer } from './plugins/require-viewer.js';
import { schema } from './schema.js';

/** Extra context the WebSocket transport hands in: the viewer it settled in onConnect. */
export interface ServerContext {
  wsViewer?: Viewer;
  requestId?: string;
}

export type PvegraphYoga = YogaServerInstance<ServerContext, RequestContext>;

export interface YogaOptions {
  services: Services;
  log: Logger;
  graphiql: boolean;
}

export function createPvegraphYoga({ services, log, graphiql }: YogaOptions): PvegraphYoga {
  return createYoga<ServerContext, RequestContext>({
    schema,
    graphqlEndpoint: '/graphql',
    landingPage: false,
    graphiql: graphiql ? { title: 'pvegraph', defaultQuery: DEFAULT_QUERY, headers: '{\n  "Authorization": "Bearer <paste your token>"\n}' } : false,
    logging: yogaLogger(log),
    maskedErrors: maskErrors(log),
    plugins: [useRequireViewer()],
    context: async (initial): Promise<RequestContext> => {
      const requestId = initial.requestId ?? initial.request.headers.get('x-request-id') ?? randomUUID();
      const base = { services, requestId, log: log.child({ requestId }) };
      if (initial.wsViewer) return { ...base, viewer: initial.wsViewer, authFailure: null };
      const token = bearerToken(initial.request.headers.get('authorization'));
      if (!token) return { ...base, viewer: null, authFailure: 'missing' };
      const viewer = await services.auth.verify(token);
      return { ...base, viewer, authFailure: viewer ? null : 'invalid' };
    },
  });
}

/**
 * Yoga logs the original of every error its masking replaced. Those are either client errors
 * (whose messages may quote the request's variables, secrets included) or unexpected errors
 * that maskErrors has logged already with their stack: skip GraphQLErrors here.
 */
function yogaLogger(log: Logger): YogaLogger {
  const forward = (level: 'debug' | 'info' | 'warn' | 'error') => (...args: unknown[]) => {
    const [first, ...rest] = args;
    if (first instanceof GraphQLError) return;
    if (first instanceof Error) log[level]({ err: first }, first.message);
    else log[level]({ details: rest.length ? rest : undefined }, String(first));
  };
  return { debug: forward('debug'), info: forward('info'), warn: forward('warn'), error: forward('error') };
}

const DEFAULT_QUERY = `# Welcome to pvegraph. Put your API token into the Headers tab below
# ({"Authorization": "Bearer pvg_…"}), then run:
query Me {
  me {
    id
    name
  }
}
`;
