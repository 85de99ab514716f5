import { LRUCache } from 'lru-cache';

/**
 * The in-process caches' one construction: bounded by entry count (least recently used out
 * first), optionally with a lifetime per entry. An expired entry is never answered, and is
 * dropped when read.
 */
export interface LruOptions<K extends NonNullable<unknown>, V extends NonNullable<unknown>> {
  /** Bound on entries: a flood of distinct keys must not grow memory. */
  max: number;
  /**
   * Default lifetime of an entry in ms (none when left out); set() can give one of its own,
   * which must be positive (lru-cache reads a ttl of 0 as "forever").
   */
  ttlMs?: number;
  /** The clock lifetimes count on (tests step one by hand); monotonic performance.now() by default. */
  now?: () => number;
  /** Called for an entry pushed out by the bound (not for deletes, overwrites or clear()). */
  onEvict?: (value: V, key: K) => void;
}

export function lruCache<K extends NonNullable<unknown>, V extends NonNullable<unknown>>(
  opts: LruOptions<K, V>,
): LRUCache<K, V> {
  const { onEvict } = opts;
  return new LRUCache<K, V>({
    max: opts.max,
    ...(opts.ttlMs !== undefined ? { ttl: opts.ttlMs } : {}),
    // Shifted by 1 ms: lru-cache reads a start time of 0 as "no lifetime", and a test clock starts at 0.
    ...(opts.now
      ? {
          perf: {
            now: (
              (now) => () =>
                now() + 1
            )(opts.now),
          },
        }
      : {}),
    // Read the clock on every check: lru-cache's default reuses a reading for 1 ms through a
    // timer, which a hand-stepped test clock would see as time standing still.
    ttlResolution: 0,
    ...(onEvict
      ? { dispose: (value: V, key: K, reason: LRUCache.DisposeReason) => reason === 'evict' && onEvict(value, key) }
      : {}),
  });
}

export type { LRUCache };
