import { createHash } from 'node:crypto';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { PrismaPg } from '@prisma/adapter-pg';
import pg, { type QueryResultRow } from 'pg';
import { PrismaPGlite } from 'pglite-prisma-adapter';
import { PrismaClient } from './generated/prisma/client.js';
import type { SqlSession } from './migrate.js';
import { openPglite } from './pglite.js';

export { PrismaClient };
export type { Prisma } from './generated/prisma/client.js';

/**
 * The database a server runs on: PostgreSQL when DATABASE_URL is set, otherwise PGlite in
 * the data directory (embedded mode). Both take the same migrations and the same Prisma client.
 */
export interface Database {
  readonly kind: 'postgresql' | 'embedded';
  readonly prisma: PrismaClient;
  /**
   * One parameterised statement on the pool Prisma uses (PGlite's single session when
   * embedded). For the few statements on a hot path: Prisma's `$queryRaw` costs about 0.3 ms
   * of CPU per statement on top of the driver's 0.2 ms (one reservation batch's record).
   */
  readonly sql: SqlQuery;
  /** A raw session for migrations. */
  withSession<T>(fn: (session: SqlSession) => Promise<T>): Promise<T>;
  ping(): Promise<void>;
  close(): Promise<void>;
}

export type SqlQuery = <Row = Record<string, unknown>>(text: string, params?: unknown[]) => Promise<Row[]>;

export interface OpenOptions {
  poolMax?: number;
  /** Called with every SQL statement sent, through Prisma or `sql` (tests count round trips with it). */
  onQuery?: (sql: string) => void;
}

export async function openPostgres(url: string, opts: OpenOptions = {}): Promise<Database> {
  const pool = new pg.Pool({ connectionString: url, max: opts.poolMax ?? 10, connectionTimeoutMillis: 5_000 });
  // An idle connection the server ended (a restart, a dropped database) is an 'error' on the
  // pool, fatal to the process when nobody listens (Prisma's adapter listens only while it is
  // connected; close() ends the pool after it): the pool drops that client by itself, and the
  // next statement connects afresh (or fails, and its caller answers for it).
  pool.on('error', () => undefined);
  // The adapter leaves the pool to its owner: close() ends it.
  const adapter = new PrismaPg(pool);
  const prisma = opts.onQuery
    ? withQueryListener(new PrismaClient({ adapter, log: [{ emit: 'event', level: 'query' }] }), opts.onQuery)
    : new PrismaClient({ adapter });
  return {
    kind: 'postgresql',
    prisma,
    async sql<Row>(text: string, params?: unknown[]) {
      opts.onQuery?.(text);
      return (await pool.query<Row & QueryResultRow>({ name: preparedName(text), text, values: params })).rows;
    },
    async withSession(fn) {
      const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5_000 });
      await client.connect();
      try {
        return await fn({
          query: (sql, params) => client.query(sql, params as unknown[]) as never,
          exec: async (sql) => {
            await client.query(sql);
          },
        });
      } finally {
        await client.end();
      }
    },
    async ping() {
      await prisma.$queryRaw`SELECT 1`;
    },
    async close() {
      await prisma.$disconnect();
      await pool.end();
    },
  };
}

/**
 * `sql` statements run as named prepared statements: PostgreSQL parses and plans each once per
 * connection instead of at every call (measured on a reservation batch's record: 0.39 ms of
 * server CPU per statement unnamed, 0.23 ms named). The name is the text's digest, so a text
 * always gets the same name (pg refuses one name for two texts).
 */
const preparedNames = new Map<string, string>();
function preparedName(text: string): string {
  let name = preparedNames.get(text);
  if (name === undefined) {
    name = `pvg_${createHash('sha256').update(text).digest('hex').slice(0, 24)}`;
    preparedNames.set(text, name);
  }
  return name;
}

function withQueryListener(prisma: PrismaClient<'query'>, onQuery: (sql: string) => void): PrismaClient {
  prisma.$on('query', (event) => onQuery(event.query));
  return prisma;
}

export async function openEmbedded(dataDir: string): Promise<Database> {
  const dir = path.join(dataDir, 'pglite');
  await mkdir(dir, { recursive: true });
  const pglite = await openPglite(dir);
  const prisma = new PrismaClient({ adapter: new PrismaPGlite(pglite) });
  const session: SqlSession = {
    query: (sql, params) => pglite.query(sql, params) as never,
    exec: async (sql) => {
      await pglite.exec(sql);
    },
  };
  return {
    kind: 'embedded',
    prisma,
    async sql<Row>(text: string, params?: unknown[]) {
      return (await pglite.query<Row>(text, params)).rows;
    },
    // PGlite has one session underneath: migrations run before Prisma is used.
    withSession: (fn) => fn(session),
    async ping() {
      await pglite.query('SELECT 1');
    },
    async close() {
      await prisma.$disconnect();
      await pglite.close();
    },
  };
}
