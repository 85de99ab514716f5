/**
 * Concurrent calls for one key are served in batches: a call that finds no batch of its key
 * running starts one at once (no added wait when the key is quiet); calls that arrive while a
 * batch runs are gathered and go together as the next batch when it ends (up to `maxBatch`
 * per batch). Under load one round trip then serves many calls instead of one each (a
 * database commit, a Redis script). `flush` answers one result per item, in order; when it
 * throws, every call of that batch fails with its error.
 *
 * With `gatherMs`, callers that come back are waited for: a batch that starts less than
 * gatherMs after the previous one of its key ended waits (at most gatherMs) until as many
 * calls are queued as that batch had plus those that were queued behind it, up to maxBatch.
 * Its callers usually call again at once (a client working through a list, a load of N
 * connections); without the wait the first of them to come back starts a batch of its own and
 * the rest gather behind it, and the key runs two part-size batches in turn for as long as the
 * load lasts (measured with 16 callers in a loop: batches of 1 and 15, or 8 and 8,
 * alternating). A key that was quiet for gatherMs never waits, and after a wait that ran out
 * (callers far away, or a load that ended) the key's next batch does not wait either: where
 * callers do not come back in time, at most every other batch waits for nothing.
 */
export class KeyedBatcher<K, I, O> {
  private readonly queues = new Map<K, Array<Pending<I, O>>>();
  private readonly running = new Set<K>();
  /** Each key's last batch: its size, the calls queued behind it when it ended, and when. */
  private readonly lastBatch = new Map<K, { size: number; queuedBehind: number; endedAt: number }>();
  /** A key's batch waiting for calls: how many it waits for, and how to end the wait. */
  private readonly gathering = new Map<K, { target: number; wake: () => void }>();
  /** Keys whose last wait ran out before its calls came. */
  private readonly waitedInVain = new Set<K>();

  constructor(
    private readonly flush: (key: K, items: I[]) => Promise<O[]>,
    private readonly maxBatch: number,
    private readonly gatherMs = 0,
  ) {
    if (!Number.isInteger(maxBatch) || maxBatch < 1) throw new TypeError('maxBatch must be a positive integer');
    if (!Number.isFinite(gatherMs) || gatherMs < 0) throw new TypeError('gatherMs must be a finite number ≥ 0');
  }

  run(key: K, item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      let queue = this.queues.get(key);
      if (!queue) {
        queue = [];
        this.queues.set(key, queue);
      }
      queue.push({ item, resolve, reject });
      const waiting = this.gathering.get(key);
      if (waiting && queue.length >= waiting.target) waiting.wake();
      if (!this.running.has(key)) void this.drain(key);
    });
  }

  private async drain(key: K): Promise<void> {
    this.running.add(key);
    try {
      for (;;) {
        if (!this.queues.get(key)?.length) {
          this.queues.delete(key);
          return;
        }
        await this.gather(key);
        const batch = this.queues.get(key)!.splice(0, this.maxBatch);
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
        if (this.gatherMs > 0) this.ended(key, batch.length);
      }
    } finally {
      this.running.delete(key);
    }
  }

  private ended(key: K, size: number): void {
    const now = performance.now();
    // Keys that went quiet are forgotten now and then (an entry is of no use after gatherMs).
    if (this.lastBatch.size >= 1_000) {
      for (const [k, b] of this.lastBatch) if (now - b.endedAt >= this.gatherMs) this.lastBatch.delete(k);
      this.waitedInVain.clear();
    }
    this.lastBatch.set(key, { size, queuedBehind: this.queues.get(key)?.length ?? 0, endedAt: now });
  }

  /** Waits for the previous batch's callers to come back (see the class comment). */
  private async gather(key: K): Promise<void> {
    const last = this.lastBatch.get(key);
    this.lastBatch.delete(key);
    if (this.gatherMs === 0 || !last || performance.now() - last.endedAt >= this.gatherMs) return;
    if (this.waitedInVain.delete(key)) return;
    // The calls queued behind that batch, and as many again as it had: its callers coming back.
    const target = Math.min(this.maxBatch, last.size + last.queuedBehind);
    if (this.queues.get(key)!.length >= target) return;
    await new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.gathering.delete(key);
        resolve();
      };
      const timer = setTimeout(() => {
        this.waitedInVain.add(key);
        wake();
      }, this.gatherMs);
      this.gathering.set(key, { target, wake });
    });
  }
}

interface Pending<I, O> {
  item: I;
  resolve: (value: O) => void;
  reject: (err: unknown) => void;
}
