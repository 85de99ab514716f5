import { isCluster, type RedisClient } from '../../src/redis/redis.js';

/**
 * Deletes every key whose name starts with `prefix` (one deployment's, one test run's); answers
 * how many. `redis` has no key prefix of its own. On a cluster every master is scanned (SCAN
 * sees one node's keys) and keys are unlinked one by one (they are in different slots).
 */
export async function deleteKeysWithPrefix(redis: RedisClient, prefix: string): Promise<number> {
  if (!isCluster(redis)) return deleteOnNode(redis, prefix, (keys) => redis.unlink(...keys));
  let deleted = 0;
  for (const master of redis.nodes('master')) {
    deleted += await deleteOnNode(master, prefix, async (keys) =>
      (await Promise.all(keys.map((k) => redis.unlink(k)))).reduce((a, b) => a + b, 0),
    );
  }
  return deleted;
}

async function deleteOnNode(
  node: RedisClient,
  prefix: string,
  unlink: (keys: string[]) => Promise<number>,
): Promise<number> {
  let deleted = 0;
  let cursor = '0';
  do {
    const [next, keys] = await node.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
    if (keys.length) deleted += await unlink(keys);
    cursor = next;
  } while (cursor !== '0');
  return deleted;
}
