/**
 * Concurrent requests for one key share a single piece of work: when a cached value expires
 * under load, one database or Proxmox call serves every waiting request instead of one call
 * each (which would stall the event loop and queue on the connection pool). Failures are
 * shared too and not remembered: the next call after settling starts afresh.
 */
export class SingleFlight<K, V> {
  private readonly pending = new Map<K, Promise<V>>();

  run(key: K, work: () => Promise<V>): Promise<V> {
    let shared = this.pending.get(key);
    if (!shared) {
      shared = work().finally(() => this.pending.delete(key));
      this.pending.set(key, shared);
    }
    return shared;
  }
}

/**
 * Whether a cached entry is in the last fifth of its lifetime: callers then reload it in the
 * background while still answering from it, so a key in steady use never misses (and a
 * change — a revoked token, a deleted node — is still seen within the lifetime).
 */
export function dueForRefresh(expiresAt: number, now: number, ttlMs: number): boolean {
  return expiresAt - now < ttlMs / 5;
}
