import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { KeyedBatcher } from '../../src/concurrency/batcher.js';

/** A batcher whose flush takes `flushMs` and records each batch's size. */
function recorded(maxBatch: number, gatherMs: number, flushMs = 1) {
  const sizes: number[] = [];
  const batcher = new KeyedBatcher<string, number, number>(
    async (_, items) => {
      sizes.push(items.length);
      await new Promise((r) => setTimeout(r, flushMs));
      return items.map((i) => i * 10);
    },
    maxBatch,
    gatherMs,
  );
  return { batcher, sizes };
}

/**
 * `callers` clients, each calling again as soon as it has its answer, client i after i turns
 * of the event loop (answers reach real clients one by one, not all in the same instant).
 */
async function closedLoop(batcher: KeyedBatcher<string, number, number>, callers: number, rounds: number) {
  await Promise.all(
    Array.from({ length: callers }, async (_, i) => {
      for (let r = 0; r < rounds; r++) {
        for (let t = 0; t < i; t++) await nextTurn();
        expect(await batcher.run('space', i)).toBe(i * 10);
      }
    }),
  );
}

describe('KeyedBatcher', () => {
  it('answers each call with its own result, in batches of at most maxBatch', async () => {
    const { batcher, sizes } = recorded(4, 0);
    const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => batcher.run('k', i)));
    expect(answers).toEqual(Array.from({ length: 10 }, (_, i) => i * 10));
    // Calls made in one turn of the event loop go together; the rest queue behind.
    expect(sizes).toEqual([4, 4, 2]);
  });

  it('fails every call of a batch whose flush throws, and goes on with the next batch', async () => {
    let n = 0;
    const batcher = new KeyedBatcher<string, number, number>(async (_, items) => {
      if (n++ === 0) throw new Error('store down');
      return items;
    }, 2);
    const calls = [1, 2, 3].map((i) => batcher.run('k', i).then(String, (e: Error) => e.message));
    expect(await Promise.all(calls)).toEqual(['store down', 'store down', '3']);
    expect(await batcher.run('k', 4)).toBe(4);
  });

  it('keys never share a batch', async () => {
    const seen: string[][] = [];
    const batcher = new KeyedBatcher<string, string, string>(async (key, items) => {
      seen.push(items.map((i) => `${key}:${i}`));
      return items;
    }, 8);
    await Promise.all(['a', 'b', 'a', 'b'].map((k, i) => batcher.run(k, String(i))));
    for (const batch of seen) expect(new Set(batch.map((e) => e.split(':')[0])).size).toBe(1);
  });

  it('a call to a quiet key starts its batch at once, even right after a batch of several', async () => {
    const { batcher, sizes } = recorded(16, 20);
    const first = batcher.run('k', 7);
    await nextTurn();
    expect(sizes).toEqual([1]); // flushed within the turn: no wait
    expect(await first).toBe(70);
    await Promise.all([1, 2, 3].map((i) => batcher.run('k', i)));
    expect(sizes).toEqual([1, 3]);
    // Quiet for longer than gatherMs: the last batch's three callers are not waited for.
    await sleep(40);
    const lone = batcher.run('k', 8);
    await nextTurn();
    expect(sizes).toEqual([1, 3, 1]);
    expect(await lone).toBe(80);
  });

  it('without gatherMs, 16 callers in a loop split into two batches that alternate', async () => {
    const { batcher, sizes } = recorded(16, 0);
    await closedLoop(batcher, 16, 12);
    const steady = sizes.slice(4);
    expect(steady.filter((s) => s === 16).length).toBeLessThan(steady.length / 2);
  });

  it('with gatherMs, the callers of a batch are waited for: 16 callers in a loop go as one batch of 16', async () => {
    // A wait long enough that only callers that never come back make it run out, also on a
    // machine busy enough to stall the event loop now and then.
    const { batcher, sizes } = recorded(16, 500);
    await closedLoop(batcher, 16, 12);
    // 192 calls. The first goes alone (the key was quiet) and the others may straggle into a
    // few part batches at the start, which leaves the callers out of step at the end; between,
    // every batch is whole. Split in two each round instead, they would take about 24 batches.
    expect(sizes.filter((s) => s === 16).length, `batch sizes ${sizes.join(', ')}`).toBeGreaterThanOrEqual(8);
    expect(sizes.length, `batch sizes ${sizes.join(', ')}`).toBeLessThanOrEqual(18);
  });

  it('callers that do not come back delay the next batch by gatherMs, and after that the key waits no more', async () => {
    const { batcher, sizes } = recorded(16, 500);
    await Promise.all([1, 2, 3, 4].map((i) => batcher.run('k', i)));
    // The batch of 4 just ended: two calls wait for two more that never come, then go.
    const started = performance.now();
    await Promise.all([5, 6].map((i) => batcher.run('k', i)));
    expect(performance.now() - started).toBeGreaterThanOrEqual(400);
    // Right after that wait in vain, a lone call goes at once (it would wait for 2 otherwise).
    const lone = batcher.run('k', 7);
    await nextTurn();
    expect(sizes).toEqual([4, 2, 1]);
    expect(await lone).toBe(70);
  });

  it('rejects a maxBatch or gatherMs it cannot use', () => {
    const flush = async (_: string, items: number[]) => items;
    expect(() => new KeyedBatcher(flush, 0)).toThrow(TypeError);
    expect(() => new KeyedBatcher(flush, 1.5)).toThrow(TypeError);
    expect(() => new KeyedBatcher(flush, 4, -1)).toThrow(TypeError);
    expect(() => new KeyedBatcher(flush, 4, Number.NaN)).toThrow(TypeError);
    expect(() => new KeyedBatcher(flush, 4, Number.POSITIVE_INFINITY)).toThrow(TypeError);
  });
});
