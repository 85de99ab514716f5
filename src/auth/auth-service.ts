import DataLoader from 'dataloader';
import type { PrismaClient } from '../db/database.js';
import { isUniqueViolation } from '../db/prisma-errors.js';
import { ConflictError, NotFoundError } from '../errors.js';
import { displayPrefix, generateToken, hashToken, isWellFormedToken } from './api-token.js';
import { dueForRefresh, SingleFlight } from '../concurrency/single-flight.js';
import { type LRUCache, lruCache } from '../cache/lru.js';

/** The authenticated caller of a request. */
export interface Viewer {
  userId: string;
  userName: string;
  tokenId: string;
}

const NEGATIVE_TTL_MS = 5_000;

interface CachedViewer {
  viewer: Viewer;
  expiresAt: number;
}

export interface AuthServiceOptions {
  /** How long a verified token is trusted without the database: revocation takes effect within it. */
  cacheTtlMs: number;
  /** Bound on cached tokens, so unbounded distinct tokens cannot grow memory. */
  cacheMaxEntries?: number;
  now?: () => number;
  /**
   * A background re-check of a cached token failed (the database is unreachable). The entry
   * keeps answering until it expires; this only reports it (metric, log).
   */
  onBackgroundCheckFailed?: (err: unknown) => void;
}

interface TokenRow {
  id: string;
  tokenHash: string;
  revokedAt: Date | null;
  lastUsedAt: Date | null;
  user: { id: string; name: string };
}

/** How precisely `lastUsedAt` follows use (shown by `pvegraph token list`). */
export const LAST_USED_RESOLUTION_MS = 5 * 60_000;

/**
 * Users and their API tokens. Token checks hit the database once per token per `cacheTtlMs`,
 * not on every request.
 */
export class AuthService {
  private readonly cache: LRUCache<string, CachedViewer>;
  /**
   * Recently refused token hashes: a client retrying a bad token (or guessing) costs one
   * database query per NEGATIVE_TTL_MS, not one per request. Tokens are random 256-bit values,
   * so a refused hash cannot become valid later.
   */
  private readonly refused: LRUCache<string, true>;
  private readonly lookups = new SingleFlight<string, Viewer | null>();
  /**
   * Token rows by hash, looked up together when several are needed at once (a burst of
   * re-checks for many users' tokens costs one query, not one each: each Prisma query costs
   * ~0.5 ms of CPU here).
   */
  private readonly tokenRows = new DataLoader<string, TokenRow | null>(
    async (hashes) => {
      const rows = await this.prisma.apiToken.findMany({
        where: { tokenHash: { in: [...hashes] } },
        select: {
          id: true,
          tokenHash: true,
          revokedAt: true,
          lastUsedAt: true,
          user: { select: { id: true, name: true } },
        },
      });
      const byHash = new Map(rows.map((r) => [r.tokenHash, r]));
      return hashes.map((h) => byHash.get(h) ?? null);
    },
    // Batching only: caching is verify's job (with lifetimes and revocation).
    { cache: false, maxBatchSize: 500 },
  );
  private readonly now: () => number;

  constructor(
    private readonly prisma: PrismaClient,
    private readonly opts: AuthServiceOptions,
  ) {
    const max = opts.cacheMaxEntries ?? 10_000;
    this.now = opts.now ?? Date.now;
    this.cache = lruCache({ max, now: this.now });
    this.refused = lruCache({ max, now: this.now });
  }

  async createUser(name: string): Promise<{ userId: string; token: string }> {
    const token = generateToken();
    try {
      const user = await this.prisma.user.create({
        data: { name, tokens: { create: { tokenHash: hashToken(token), prefix: displayPrefix(token) } } },
      });
      return { userId: user.id, token };
    } catch (err) {
      if (isUniqueViolation(err)) throw new ConflictError(`A user named "${name}" already exists.`);
      throw err;
    }
  }

  async createToken(userName: string): Promise<{ tokenId: string; token: string }> {
    const user = await this.prisma.user.findUnique({ where: { name: userName } });
    if (!user) throw new NotFoundError('User', userName);
    const token = generateToken();
    const row = await this.prisma.apiToken.create({
      data: { userId: user.id, tokenHash: hashToken(token), prefix: displayPrefix(token) },
    });
    return { tokenId: row.id, token };
  }

  async listTokens(userName: string) {
    const user = await this.prisma.user.findUnique({ where: { name: userName } });
    if (!user) throw new NotFoundError('User', userName);
    return this.prisma.apiToken.findMany({
      where: { userId: user.id },
      orderBy: { createdAt: 'asc' },
      select: { id: true, prefix: true, createdAt: true, lastUsedAt: true, revokedAt: true },
    });
  }

  /** Revokes by token id or by display prefix. Cached copies expire within `cacheTtlMs`. */
  async revokeToken(idOrPrefix: string): Promise<number> {
    const byId = /^[0-9a-f-]{36}$/i.test(idOrPrefix);
    const { count } = await this.prisma.apiToken.updateMany({
      where: { ...(byId ? { id: idOrPrefix } : { prefix: idOrPrefix }), revokedAt: null },
      data: { revokedAt: new Date() },
    });
    return count;
  }

  async countUsers(): Promise<number> {
    return this.prisma.user.count();
  }

  /** The viewer a token belongs to, or null for an unknown, revoked or malformed token. */
  async verify(token: string): Promise<Viewer | null> {
    if (!isWellFormedToken(token)) return null;
    const hash = hashToken(token);
    const cached = this.fromCache(hash);
    return cached !== undefined ? cached : this.lookup(hash);
  }

  /**
   * What verify would answer without the database: the viewer, null (malformed, or refused a
   * moment ago), or undefined when only a lookup can tell. A lookup is what a flood of made-up
   * tokens costs, so callers may decide first whether to pay for it (src/http/anonymous-budget.ts).
   */
  verifyCached(token: string): Viewer | null | undefined {
    return isWellFormedToken(token) ? this.fromCache(hashToken(token)) : null;
  }

  private fromCache(hash: string): Viewer | null | undefined {
    const hit = this.cache.get(hash);
    if (hit) {
      if (dueForRefresh(hit.expiresAt, this.now(), this.opts.cacheTtlMs))
        void this.lookup(hash).catch((err: unknown) => this.opts.onBackgroundCheckFailed?.(err));
      return hit.viewer;
    }
    return this.refused.has(hash) ? null : undefined;
  }

  /** The database lookup behind verify: one at a time per token, shared by concurrent callers. */
  private lookup(hash: string): Promise<Viewer | null> {
    return this.lookups.run(hash, async () => {
      // Lifetimes count from before the read: a revocation committed while it was in flight
      // is still seen within cacheTtlMs of that commit.
      const now = this.now();
      const row = await this.tokenRows.load(hash);
      if (!row || row.revokedAt) {
        // A background refresh can find the token revoked: forget the cached viewer too.
        this.cache.delete(hash);
        const left = now + Math.min(this.opts.cacheTtlMs, NEGATIVE_TTL_MS) - this.now();
        if (this.opts.cacheTtlMs > 0 && left > 0) this.refused.set(hash, true, { ttl: left });
        return null;
      }
      const viewer: Viewer = { userId: row.user.id, userName: row.user.name, tokenId: row.id };
      this.remember(hash, { viewer, expiresAt: now + this.opts.cacheTtlMs });
      // A write per token at most every LAST_USED_RESOLUTION_MS (not per lookup: a busy
      // deployment refreshes every token each cache lifetime); a failure must not fail the request.
      if (!row.lastUsedAt || now - row.lastUsedAt.getTime() >= LAST_USED_RESOLUTION_MS) {
        this.prisma.apiToken
          .update({ where: { id: row.id }, data: { lastUsedAt: new Date(now) } })
          .catch(() => undefined);
      }
      return viewer;
    });
  }

  /** Caches the entry for what is left of its lifetime (counted from before the read). */
  private remember(hash: string, entry: CachedViewer): void {
    const left = entry.expiresAt - this.now();
    if (this.opts.cacheTtlMs > 0 && left > 0) this.cache.set(hash, entry, { ttl: left });
  }
}
