import type { PrismaClient } from '../db/database.js';
import type { EndpointResult } from '../proxmox/index.js';

/** A change of an endpoint's state is written at most this often (the latest state wins). */
const MIN_GAP_MS = 2_000;
/** An unchanged working endpoint gets its lastOkAt refreshed this often. */
const REFRESH_MS = 60_000;
const MAX_TRACKED = 10_000;

interface State {
  ok: boolean;
  error: string | null;
  /** When the database last got this endpoint's state (0: never). */
  writtenAt: number;
  pending: { ok: boolean; error: string | null; at: Date } | null;
  timer: NodeJS.Timeout | null;
}

/**
 * Keeps each endpoint's `lastError` / `lastOkAt` from the Proxmox client's per-attempt reports
 * (ProxmoxTarget.onEndpointResult), cheaply: the hot path only compares with an in-memory
 * state. The database is written
 * - when the state changes (working ↔ failing, or a different error message), at once, but at
 *   most once per endpoint per MIN_GAP_MS: a change within that gap is written at its end, with
 *   the latest state (a flapping endpoint costs one write per 2 s, not one per call);
 * - when nothing changed: a working endpoint's lastOkAt is refreshed at most once per
 *   REFRESH_MS (so it is never more than about a minute old while calls go through it); a
 *   failing endpoint's same error is not written again.
 * A success clears lastError: a non-null lastError means "failing as of its last use".
 * Writes are guarded by the endpoint's host and port (and position), so a report about an
 * endpoint that was replaced in the meantime changes nothing. Writes never fail a call; the
 * state is per instance (each instance writes what it sees).
 */
export class EndpointHealth {
  private readonly states = new Map<string, State>();
  private closed = false;

  constructor(
    private readonly prisma: PrismaClient,
    private readonly onWriteFailed?: (err: unknown) => void,
  ) {}

  record(nodeId: string, r: EndpointResult): void {
    if (this.closed) return;
    const key = `${nodeId}|${r.index}|${r.host}|${r.port}`;
    const now = Date.now();
    let s = this.states.get(key);
    if (!s) {
      if (this.states.size >= MAX_TRACKED) this.evictOne();
      s = { ok: !r.ok, error: null, writtenAt: 0, pending: null, timer: null };
      this.states.set(key, s);
    }
    const changed = s.ok !== r.ok || s.error !== r.error;
    if (!changed && !s.pending && (!r.ok || now - s.writtenAt < REFRESH_MS)) return;
    s.ok = r.ok;
    s.error = r.error;
    s.pending = { ok: r.ok, error: r.error, at: new Date(now) };
    if (s.timer) return; // written at the end of the gap
    const wait = s.writtenAt + MIN_GAP_MS - now;
    if (wait <= 0) {
      this.flush(nodeId, r, s);
    } else {
      s.timer = setTimeout(() => {
        s.timer = null;
        this.flush(nodeId, r, s);
      }, wait);
      s.timer.unref?.();
    }
  }

  /** Forgets what was written for a node (its endpoints were just replaced or reset). */
  forget(nodeId: string): void {
    for (const [key, s] of this.states) {
      if (!key.startsWith(`${nodeId}|`)) continue;
      if (s.timer) clearTimeout(s.timer);
      this.states.delete(key);
    }
  }

  close(): void {
    this.closed = true;
    for (const s of this.states.values()) if (s.timer) clearTimeout(s.timer);
    this.states.clear();
  }

  private evictOne(): void {
    for (const [key, s] of this.states) {
      if (s.timer) continue;
      this.states.delete(key);
      return;
    }
  }

  private flush(nodeId: string, r: Pick<EndpointResult, 'index' | 'host' | 'port'>, s: State): void {
    const p = s.pending;
    if (!p || this.closed) return;
    s.pending = null;
    s.writtenAt = Date.now();
    const write =
      r.index === 0
        ? // Raw: the registration's updatedAt is about what its owner changed, not its health.
          p.ok
          ? this.prisma
              .$executeRaw`UPDATE proxmox_nodes SET primary_last_error = NULL, primary_last_ok_at = ${p.at} WHERE id = ${nodeId}::uuid AND host = ${r.host} AND port = ${r.port}`
          : this.prisma
              .$executeRaw`UPDATE proxmox_nodes SET primary_last_error = ${p.error} WHERE id = ${nodeId}::uuid AND host = ${r.host} AND port = ${r.port}`
        : this.prisma.proxmoxNodeEndpoint.updateMany({
            where: { nodeId, position: r.index, host: r.host, port: r.port },
            data: p.ok ? { lastError: null, lastOkAt: p.at } : { lastError: p.error },
          });
    Promise.resolve(write).catch((err: unknown) => {
      if (!this.closed) this.onWriteFailed?.(err);
    });
  }
}
