/**
 * Diagnostic (not part of `npm run bench`): the JavaScript cost of delivering one
 * subscription event, per subscriber, with no sockets: N graphql-ws subscriptions of
 * `vmidEvents` through the real Yoga/envelop plugins and graphql-ws server, sockets whose
 * send() only counts, one node's event stream stubbed. Shows what the per-subscriber layers
 * cost apart from the kernel's socket writes (BENCHMARKS.md, scenario 2 findings).
 *
 *   npx tsx bench/fanout-js.ts            (N=10000 subscribers by default, 6 rounds)
 */
import { makeServer } from 'graphql-ws';
import { GraphQLError } from 'graphql';
import pino from 'pino';
import { createAuthenticate } from '../src/auth/authenticate.js';
import { createPvegraphYoga } from '../src/api/yoga.js';
import { createErrorMasker } from '../src/graphql/plugins/mask-errors.js';
import { Metrics } from '../src/observability/metrics.js';
import { EventStream, type Push } from '../src/vmids/event-stream.js';

const N = Number(process.env.N ?? 10000);
const pushes = new Set<Push<unknown>>();
const viewer = { userId: 'u1', userName: 'x', tokenId: 't' };
const services: any = {
  vmids: {
    subscribeNode: () =>
      new EventStream<unknown>((push, stop) => {
        pushes.add(push);
        push({ nodeId: 'n1', kind: 'SYNC', version: 1, at: new Date(), vmids: null });
        return stop.then(() => pushes.delete(push));
      }),
  },
  nodes: { ref: async () => ({ id: 'n1', userId: 'u1' }) },
  auth: { verify: async () => viewer, verifyCached: () => viewer },
};
const log = pino({ level: 'warn' });
const metrics = new Metrics();
services.metrics = metrics;
const yoga = createPvegraphYoga({
  services,
  authenticate: createAuthenticate(services.auth),
  log,
  metrics,
  masker: createErrorMasker(log),
  graphiql: false,
  introspection: false,
  maxRequestBodyBytes: 1e6,
  maxSubscriptionsPerUser: 1e6,
});

const server = makeServer<Record<string, unknown>, { viewer: typeof viewer }>({
  onConnect: (ctx) => {
    ctx.extra.viewer = viewer;
    return true;
  },
  onSubscribe: async (ctx, id, payload) => {
    // As src/http/graphql-ws-server.ts with the fast paths on: events are written through the operation's sink (graphql-ws-sink.ts).
    const head = `{"id":${JSON.stringify(id)},"type":"next","payload":`;
    const sink = { next: (serialized: string) => count(`${head}${serialized}}`) };
    const { schema, execute, subscribe, contextFactory, parse, validate } = yoga.getEnveloped({
      ...ctx,
      params: payload,
      tokenCheck: { kind: 'viewer', viewer: ctx.extra.viewer },
      requestId: 'r',
      sink,
    } as any);
    const document = parse(payload.query);
    const errors = validate(schema, document);
    if (errors.length) return errors as GraphQLError[];
    return {
      schema,
      operationName: payload.operationName,
      document,
      variableValues: payload.variables,
      contextValue: await contextFactory(),
      rootValue: { execute, subscribe },
    };
  },
  execute: (args) => (args.rootValue as any).execute(args),
  subscribe: (args) => (args.rootValue as any).subscribe(args),
});

let nexts = 0;
let target = 0;
let done: () => void = () => {};
function count(data: string) {
  if (data.includes('"next"') && ++nexts === target) done();
}
const q = JSON.stringify({ query: 'subscription($n:ID){vmidEvents(nodeId:$n){kind version}}', variables: { n: 'n1' } });
for (let i = 0; i < N; i++) {
  let onMessage!: (data: string) => Promise<void>;
  server.opened(
    {
      protocol: 'graphql-transport-ws',
      send: (data: string) => count(data),
      close: () => {},
      onMessage: (cb) => {
        onMessage = cb;
      },
    },
    { viewer },
  );
  await onMessage(JSON.stringify({ type: 'connection_init', payload: {} }));
  void onMessage(`{"id":"s${i}","type":"subscribe","payload":${q}}`);
}
const wait = (n: number) =>
  new Promise<void>((r) => {
    target = n;
    done = r;
    if (nexts >= n) r();
  });
setTimeout(() => console.log('nexts', nexts, 'pushes', pushes.size), 3000).unref();
await wait(N); // SYNCs
const __x = 0;
for (let round = 0; round < 6; round++) {
  const got = wait(nexts + N);
  const t = performance.now();
  const event = { nodeId: 'n1', kind: 'INVALIDATED', version: 2 + round, at: new Date(), vmids: null };
  for (const push of pushes) push(event);
  await got;
  console.log(
    `round ${round}: ${N} deliveries in ${(performance.now() - t).toFixed(1)} ms (${(((performance.now() - t) * 1000) / N).toFixed(2)} µs each)`,
  );
}
process.exit(0);
