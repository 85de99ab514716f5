import type { Logger } from 'pino';
import { NotFoundError } from '../errors.js';
import { CacheUnavailableError } from './errors.js';
import type { NodeRef } from './types.js';

/**
 * The store keeps one VMID space per cluster: what it calls a node is the space (its events
 * go to the space's channel, named by `userId`), shared by every registration of the cluster.
 */
export function spaceOf(node: NodeRef): NodeRef {
  return spaceRef(node.spaceId);
}

export function spaceRef(spaceId: string): NodeRef {
  return { id: spaceId, userId: spaceId, spaceId };
}

/**
 * The caller's database change has committed: it stands whatever happens here (failing the
 * request now would make a client retry something that succeeded). While Redis is down the
 * TTLs bound what stays stale. A node deleted meanwhile (by a concurrent request) has nothing
 * left to update. Anything else is a bug worth an error log.
 */
export async function bestEffort(log: Logger | undefined, what: string, op: () => Promise<unknown>): Promise<void> {
  try {
    await op();
  } catch (err) {
    if (err instanceof CacheUnavailableError)
      log?.warn({ err: { message: err.message } }, `could not ${what}: VMID cache unavailable`);
    else if (err instanceof NotFoundError) log?.debug(`did not ${what}: the node was deleted meanwhile`);
    else log?.error({ err }, `could not ${what}`);
  }
}
