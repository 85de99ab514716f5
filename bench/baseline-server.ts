/**
 * Scenario 1 baseline: the least a server can do to answer `vmidsTaken` from the cache.
 * Bare node:http; the same token check as the server (SHA-256 of the Bearer token looked up in
 * `api_tokens` via `pg`, cached in-process for TOKEN_CACHE_TTL_MS); one Redis round trip
 * (pipeline: SMEMBERS of the cached set + HGET of the version) on the same keys; the same
 * JSON shape. No GraphQL, no ownership check, no metrics.
 *
 * env: PORT, DATABASE_URL, REDIS_URL, REDIS_KEY_PREFIX
 */
import { createHash } from 'node:crypto';
import { createServer } from 'node:http';
import { Redis } from 'ioredis';
import pg from 'pg';

const port = Number(process.env.PORT);
const prefix = process.env.REDIS_KEY_PREFIX ?? '';
const db = new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 });
const redis = new Redis(process.env.REDIS_URL!);
const TTL = 30_000;
const tokens = new Map<string, { userId: string; expiresAt: number }>();

async function verify(header: string | undefined): Promise<string | null> {
  const m = header ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
  if (!m || !/^pvg_[A-Za-z0-9_-]{43}$/.test(m[1]!)) return null;
  const hash = createHash('sha256').update(m[1]!).digest('hex');
  const hit = tokens.get(hash);
  const t = Date.now();
  if (hit && hit.expiresAt > t) return hit.userId;
  const { rows } = await db.query<{ user_id: string }>(
    'SELECT user_id FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL',
    [hash],
  );
  if (!rows[0]) return null;
  tokens.set(hash, { userId: rows[0].user_id, expiresAt: t + TTL });
  return rows[0].user_id;
}

/** A node's VMID space (its cluster's, or its own id), cached like the tokens, as the server's ownership cache does. */
const spaces = new Map<string, { space: string; expiresAt: number }>();
async function spaceOf(nodeId: string): Promise<string> {
  const t = Date.now();
  const hit = spaces.get(nodeId);
  if (hit && hit.expiresAt > t) return hit.space;
  const { rows } = await db.query<{ cluster_id: string | null }>('SELECT cluster_id FROM proxmox_nodes WHERE id = $1', [
    nodeId,
  ]);
  const space = rows[0]?.cluster_id ?? nodeId;
  spaces.set(nodeId, { space, expiresAt: t + TTL });
  return space;
}

const server = createServer((req, res) => {
  const chunks: Buffer[] = [];
  req.on('data', (c: Buffer) => chunks.push(c));
  req.on('end', () => {
    void (async () => {
      try {
        const user = await verify(req.headers.authorization);
        if (!user) {
          res.writeHead(401, { 'content-type': 'application/json' }).end('{"errors":[{"message":"unauthenticated"}]}');
          return;
        }
        const body = JSON.parse(Buffer.concat(chunks).toString()) as { variables?: { n?: string } };
        const space = await spaceOf(String(body.variables?.n ?? ''));
        const [[, members], [, version]] = (await redis
          .pipeline()
          .smembers(`${prefix}vmid-cache:{${space}}`)
          .hget(`${prefix}vmid-version:{${space}}`, 'version')
          .exec()) as [[unknown, string[]], [unknown, string | null]];
        const taken = members.map(Number).sort((a, b) => a - b);
        const out = JSON.stringify({ data: { vmidsTaken: { taken, reserved: [], version: Number(version ?? 0) } } });
        res
          .writeHead(200, {
            'content-type': 'application/json; charset=utf-8',
            'content-length': Buffer.byteLength(out),
          })
          .end(out);
      } catch (err) {
        res.writeHead(500).end(String(err));
      }
    })();
  });
});

server.listen(port, '127.0.0.1', () => process.send?.({ type: 'listening', port }));
process.on('SIGTERM', () => {
  server.close();
  void Promise.allSettled([db.end(), redis.quit()]).then(() => process.exit(0));
});
