import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AuthService } from '../../src/auth/auth-service.js';
import { type Database, openPostgres } from '../../src/db/database.js';
import { TEST_POSTGRES_URL } from '../support/env.js';
import { startTcpProxy, type TcpProxy } from '../support/tcp-proxy.js';
import { createTestDatabase } from '../support/test-database.js';

/** Token verification against real PostgreSQL, counting the SQL it sends; time is an injected clock. */
describe('token cache: single-flight and refresh-ahead', () => {
  let testDb: Awaited<ReturnType<typeof createTestDatabase>>;
  let db: Database;
  let sql: string[] = [];
  let t = 0;
  let auth: AuthService;
  const TTL = 10_000;
  /** SELECTs of a token row: what verify costs the database (users and last-used writes not counted). */
  const lookups = () => sql.filter((s) => /^SELECT .* FROM "public"\."api_tokens"/.test(s)).length;
  /** The background lookup's last step is the last-used write: once it has run, the cache is renewed. */
  const lastUsedWrites = () => sql.filter((s) => /^UPDATE "public"\."api_tokens" SET "last_used_at"/.test(s)).length;
  /** Whether `p` settles before any I/O could have completed (an answer from memory, not the database). */
  const settlesAtOnce = (p: Promise<unknown>) =>
    Promise.race([p.then(() => true), new Promise<boolean>((r) => setImmediate(() => r(false)))]);

  beforeAll(async () => {
    testDb = await createTestDatabase();
    db = await openPostgres(testDb.url, { onQuery: (s) => void sql.push(s) });
  });
  afterAll(async () => {
    await db.close();
    await testDb.drop();
  });
  beforeEach(() => {
    t = 0;
    auth = new AuthService(db.prisma, { cacheTtlMs: TTL, now: () => t });
  });

  async function newToken(): Promise<string> {
    const { token } = await auth.createUser(`u-${Math.random().toString(36).slice(2)}`);
    sql = []; // count from here on
    return token;
  }

  // A burst of dashboard requests with one token after its cache entry expired costs one query, not one per request.
  it('50 concurrent verifies of an uncached token share one lookup and one viewer', async () => {
    const token = await newToken();
    // Arriving on separate event-loop turns, like requests do: Prisma batches identical
    // findUnique calls of one tick by itself, which would hide a missing single-flight.
    const pending: Array<Promise<unknown>> = [];
    for (let i = 0; i < 50; i++) {
      pending.push(auth.verify(token));
      await new Promise((r) => setImmediate(r));
    }
    const viewers = await Promise.all(pending);
    expect(lookups()).toBe(1);
    expect(viewers[0]).toMatchObject({ userName: expect.any(String) });
    for (const v of viewers) expect(v).toEqual(viewers[0]);
  });

  // A token in steady use never waits for the database: near the end of its lifetime it is re-checked behind the request.
  it('answers from the cache in the last fifth, re-checks once in the background and renews the entry', async () => {
    const token = await newToken();
    const viewer = await auth.verify(token);
    await expect.poll(lastUsedWrites).toBe(1);

    t = 8_000; // 2 s left of 10 s: not yet in the last fifth
    expect(await auth.verify(token)).toEqual(viewer);
    expect(lookups()).toBe(1);

    t = 8_500;
    const answer = auth.verify(token);
    expect(await settlesAtOnce(answer)).toBe(true);
    expect(await answer).toEqual(viewer);
    expect(await auth.verify(token)).toEqual(viewer); // joins the re-check already running
    await expect.poll(lookups).toBe(2);

    t = 12_000; // past the first expiry (10 s), within the renewed one (18.5 s)
    // Until the re-check has answered, a call here joins it (no third lookup).
    await expect.poll(() => settlesAtOnce(auth.verify(token))).toBe(true);
    expect(await auth.verify(token)).toEqual(viewer);
    expect(lookups()).toBe(2);
    // last_used_at is written at most every LAST_USED_RESOLUTION_MS, not on every re-check.
    expect(lastUsedWrites()).toBe(1);
  });

  // A revoked token stops working within the cache lifetime even if a client keeps using it without pause.
  it('sees a revocation through the background re-check and refuses the token from then on', async () => {
    const token = await newToken();
    const viewer = (await auth.verify(token))!;
    t = 1_000;
    expect(await auth.revokeToken(viewer.tokenId)).toBe(1);
    for (t = 1_000; t < 8_000; t += 1_000) expect(await auth.verify(token)).toEqual(viewer);
    expect(lookups()).toBe(1); // trusted without the database until the last fifth

    t = 8_500;
    await expect.poll(() => auth.verify(token), { interval: 5, timeout: 5_000 }).toBeNull();
    for (t = 8_500; t <= 13_000; t += 500) expect(await auth.verify(token)).toBeNull();
    expect(lookups()).toBe(2); // one re-check; afterwards the refusal itself is cached
  });
});

/** The same, with PostgreSQL cut and restored through a relay (only this file's connections). */
describe('token lookup while PostgreSQL is unreachable', () => {
  let testDb: Awaited<ReturnType<typeof createTestDatabase>>;
  let relay: TcpProxy;
  let db: Database;

  beforeAll(async () => {
    testDb = await createTestDatabase();
    const target = new URL(TEST_POSTGRES_URL),
      viaRelay = new URL(testDb.url);
    relay = await startTcpProxy(target.hostname, Number(target.port || 5432));
    viaRelay.host = `127.0.0.1:${relay.port}`;
    db = await openPostgres(viaRelay.toString());
  });
  afterAll(async () => {
    await db.close();
    await relay.close();
    await testDb.drop();
  });

  // During an outage every waiting request gets the error (no hang, no false "invalid token"), and the first request after recovery succeeds.
  it('gives every concurrent caller the error and does not remember it', async () => {
    const auth = new AuthService(db.prisma, { cacheTtlMs: 10_000, now: () => 0 });
    const { token, userId } = await auth.createUser('outage');
    await relay.down();
    const results = await Promise.allSettled(Array.from({ length: 20 }, () => auth.verify(token)));
    expect(results.every((r) => r.status === 'rejected' && r.reason instanceof Error)).toBe(true);

    await relay.up();
    expect((await auth.verify(token))?.userId).toBe(userId);
  });

  it('keeps answering from a cached token while its background re-check fails, and reports each failure', async () => {
    let t = 0;
    const failures: unknown[] = [];
    const auth = new AuthService(db.prisma, {
      cacheTtlMs: 10_000,
      now: () => t,
      onBackgroundCheckFailed: (err) => failures.push(err),
    });
    const { token, userId } = await auth.createUser('outage-recheck');
    expect((await auth.verify(token))?.userId).toBe(userId);
    await relay.down();
    try {
      t = 9_000; // in the last fifth: answered from the cache, re-checked in the background
      expect((await auth.verify(token))?.userId).toBe(userId);
      await expect.poll(() => failures.length, { timeout: 5_000 }).toBe(1);
      expect(failures[0]).toBeInstanceOf(Error);
      expect((await auth.verify(token))?.userId).toBe(userId); // still cached, a new re-check
      await expect.poll(() => failures.length, { timeout: 5_000 }).toBe(2);
      t = 10_001; // expired: now the request itself needs the database
      await expect(auth.verify(token)).rejects.toBeInstanceOf(Error);
    } finally {
      await relay.up();
    }
  });
});
