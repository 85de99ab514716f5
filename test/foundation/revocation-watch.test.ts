import { describe, expect, it } from 'vitest';
import { RevocationWatch } from '../../src/auth/revocation-watch.js';

/**
 * The sweep behind "a revoked token's sockets and SSE streams end" (the end-to-end tests are
 * in auth.test.ts). Here: what it checks, how often, and what it leaves alone.
 */
describe('RevocationWatch', () => {
  const setup = (verdicts: Record<string, unknown>) => {
    const checked: string[] = [];
    const watch = new RevocationWatch({
      verify: async (token) => {
        checked.push(token);
        const verdict = verdicts[token];
        if (verdict instanceof Error) throw verdict;
        return verdict ?? null;
      },
      intervalMs: 60_000,
    });
    const revoked: string[] = [];
    const item = (name: string) => ({ revoke: () => void revoked.push(name) });
    return { watch, checked, revoked, item };
  };

  it('checks each token once per sweep and ends everything of a token that no longer verifies', async () => {
    const { watch, checked, revoked, item } = setup({ good: { userId: 'u1' } });
    for (let i = 0; i < 3; i++) watch.watch('bad', item(`bad-${i}`));
    watch.watch('good', item('good-0'));
    await watch.sweep();
    expect(checked.sort()).toEqual(['bad', 'good']);
    expect(revoked.sort()).toEqual(['bad-0', 'bad-1', 'bad-2']);
    // Revoked once: the next sweep no longer knows the token.
    await watch.sweep();
    expect(revoked).toHaveLength(3);
    expect(watch.size).toBe(1);
    watch.stop();
  });

  it('keeps everything open when a token cannot be checked (database down)', async () => {
    const { watch, revoked, item } = setup({ flaky: new Error('connection refused') });
    watch.watch('flaky', item('flaky-0'));
    await watch.sweep();
    expect(revoked).toEqual([]);
    expect(watch.size).toBe(1);
    watch.stop();
  });

  it('ends the other connections of a token when ending one throws, and reports it', async () => {
    const failures: unknown[] = [];
    const watch = new RevocationWatch({
      verify: async () => null,
      intervalMs: 60_000,
      onRevokeFailed: (err) => failures.push(err),
    });
    const revoked: string[] = [];
    watch.watch('bad', { revoke: () => void revoked.push('first') });
    watch.watch('bad', {
      revoke: () => {
        throw new Error('socket already gone');
      },
    });
    watch.watch('bad', { revoke: () => void revoked.push('third') });
    await expect(watch.sweep()).resolves.toBeUndefined();
    expect(revoked).toEqual(['first', 'third']);
    expect(failures).toHaveLength(1);
    expect(watch.size).toBe(0);
    watch.stop();
  });

  it('forgets what is unwatched, and unwatching twice is harmless', async () => {
    const { watch, checked, revoked, item } = setup({});
    const unwatch = watch.watch('bad', item('closed-by-client'));
    const other = watch.watch('bad', item('still-open'));
    unwatch();
    unwatch();
    expect(watch.size).toBe(1);
    await watch.sweep();
    expect(revoked).toEqual(['still-open']);
    other();
    expect(watch.size).toBe(0);
    await watch.sweep();
    expect(checked).toEqual(['bad']); // nothing left to check
    watch.stop();
  });
});
