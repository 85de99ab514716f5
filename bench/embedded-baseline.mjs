// Scenario 0's baseline: what any embedded GraphQL server on this stack holds at least —
// PGlite opened on its data directory exactly as pvegraph opens it (dist/db/pglite.js: same
// settings, same first-start path) and a bare graphql-yoga "hello" server. Plain JavaScript,
// started with the same node flags as `npm start`, so neither side pays for a compiler.
// env: PVEGRAPH_DATA_DIR, PORT. Prints "listening at http://…" when it answers.
import { createServer } from 'node:http';
import path from 'node:path';
import { createSchema, createYoga } from 'graphql-yoga';
import { openPglite } from '../dist/db/pglite.js';

const db = await openPglite(path.join(path.resolve(process.env.PVEGRAPH_DATA_DIR), 'pglite'));
await db.query('SELECT 1');
const yoga = createYoga({
  schema: createSchema({ typeDefs: 'type Query { hello: String! }', resolvers: { Query: { hello: () => 'world' } } }),
  graphiql: false,
  logging: false,
});
const server = createServer(yoga);
server.listen(Number(process.env.PORT), '127.0.0.1', () => {
  process.stdout.write(`baseline listening at http://127.0.0.1:${server.address().port}/graphql\n`);
});
const stop = () => server.close(() => db.close().then(() => process.exit(0)));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
