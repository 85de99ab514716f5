/**
 * Concurrent calls for one key are served in batches: a call that finds no batch of its key
 * running starts one at once (no added wait when the key is quiet); calls that arrive while a
 * batch runs are gathered and go together as the next batch when it ends (up to `maxBatch`
 * per batch). Under load one round trip then serves many calls instead of one each (a
 * database commit, a Redis script). `flush` answers one result per item, in order; when it
 * throws, every call of that batch fails with its error.
 */
export class KeyedBatcher<K, I, O> {
  private readonly queues = new Map<K, Array<Pending<I, O>>>();
  private readonly running = new Set<K>();

  constructor(
    private readonly flush: (key: K, items: I[]) => Promise<O[]>,
    private readonly maxBatch: number,
  ) {
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new TypeError('maxBatch must be a positive integer');
  }

  run(key: K, item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      let queue = this.queues.get(key);
      if (!queue) {
        queue = [];
        this.queues.set(key, queue);
      }
      queue.push({ item, resolve, reject });
      if (!this.running.has(key)) void this.drain(key);
    });
  }

  private async drain(key: K): Promise<void> {
    this.running.add(key);
    try {
      for (;;) {
        const queue = this.queues.get(key);
        if (!queue || queue.length === 0) {
          this.queues.delete(key);
          return;
        }
        const batch = queue.splice(0, this.maxBatch);
        try {
          const results = await this.flush(
            key,
            batch.map((p) => p.item),
          );
          if (results.length !== batch.length) {
            throw new Error(`batch answered ${results.length} results for ${batch.length} items`);
          }
          batch.forEach((p, i) => p.resolve(results[i]!));
        } catch (err) {
          for (const p of batch) p.reject(err);
        }
      }
    } finally {
      this.running.delete(key);
    }
  }
}

interface Pending<I, O> {
  item: I;
  resolve: (value: O) => void;
  reject: (err: unknown) => void;
}
