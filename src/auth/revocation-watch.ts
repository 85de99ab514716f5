/**
 * Long-lived connections authenticated once when they opened — WebSockets, SSE subscriptions —
 * must not outlive their token. Each is watched under its token, and a periodic sweep checks
 * every watched token and ends what belongs to a revoked one, idle or not.
 *
 * Each token is checked once per sweep, however many connections share it (a dashboard fleet
 * behind one token may hold thousands), and through AuthService.verify, so the check is the
 * cached one: the database is asked at most once per token per cache lifetime. A verified
 * token is trusted for one cache lifetime, and a sweep in the last fifth of it starts the
 * re-check, so with sweeps every fifth of the lifetime a revocation ends everything within
 * about 1.2 × TOKEN_CACHE_TTL_MS (plus the database round trip).
 */
export interface Revocable {
  /** Ends the connection or stream because its token no longer verifies. Called at most once. */
  revoke(): void;
}

export interface RevocationWatchOptions {
  /** The viewer of a token, or null when it does not verify; a throw means "could not check". */
  verify: (token: string) => Promise<unknown>;
  /** How often every watched token is checked. */
  intervalMs: number;
  /** A connection's revoke() threw (a bug: the others of its token are still ended). */
  onRevokeFailed?: (err: unknown) => void;
}

export class RevocationWatch {
  private readonly byToken = new Map<string, Set<Revocable>>();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly opts: RevocationWatchOptions) {
    // sweep() does not reject: each token's check and each revoke() catch their own errors.
    this.timer = setInterval(() => void this.sweep(), opts.intervalMs);
    this.timer.unref();
  }

  /** Watches `item` under `token` until the returned function is called (it may be called again). */
  watch(token: string, item: Revocable): () => void {
    let items = this.byToken.get(token);
    if (!items) this.byToken.set(token, (items = new Set()));
    items.add(item);
    return () => {
      const current = this.byToken.get(token);
      if (!current?.delete(item)) return;
      if (current.size === 0) this.byToken.delete(token);
    };
  }

  /** How many connections are watched. */
  get size(): number {
    let n = 0;
    for (const items of this.byToken.values()) n += items.size;
    return n;
  }

  /** Checks every watched token once and revokes what belongs to those that no longer verify. */
  async sweep(): Promise<void> {
    await Promise.all([...this.byToken.keys()].map((token) => this.check(token)));
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async check(token: string): Promise<void> {
    let viewer: unknown;
    try {
      viewer = await this.opts.verify(token);
    } catch {
      return; // could not check (database down): not a revocation, keep everything open
    }
    if (viewer !== null) return;
    const items = this.byToken.get(token);
    this.byToken.delete(token);
    for (const item of items ?? []) {
      try {
        item.revoke();
      } catch (err) {
        this.opts.onRevokeFailed?.(err);
      }
    }
  }
}
