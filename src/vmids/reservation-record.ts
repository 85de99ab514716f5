import type { Database, PrismaClient } from '../db/database.js';
import type { HeldReservation, SeedState } from './store.js';

/** Rows this long past their expiry are deleted (they count as absent from their expiry on). */
const PURGE_AFTER_MS = 86_400_000;
/** How often (at most) one instance purges. */
const PURGE_EVERY_MS = 600_000;

/**
 * The durable record of VMID reservations in the database (PostgreSQL, or PGlite when
 * embedded). It does not decide anything on its own: the fast store's atomic script decides,
 * and this keeps what it decided, so a Redis that lost its data (or an embedded process that
 * restarted) gets every live reservation back before it decides again (ReservationSeeder).
 */
export class ReservationRecord {
  private lastPurge = 0;

  private readonly prisma: PrismaClient;
  private readonly sql: Database['sql'];

  constructor(db: Pick<Database, 'prisma' | 'sql'>) {
    this.prisma = db.prisma;
    this.sql = db.sql;
  }

  /** The space's reservations whose time is not up. */
  async live(spaceId: string): Promise<HeldReservation[]> {
    const rows = await this.prisma.vmidReservation.findMany({
      where: { spaceId, expiresAt: { gt: new Date() } },
      select: { vmid: true, ownerId: true, expiresAt: true },
      orderBy: { vmid: 'asc' },
    });
    return rows.map((r) => ({ vmid: r.vmid, owner: r.ownerId, expiresAt: r.expiresAt }));
  }

  /** What a fast store that lost the space gets back: its live reservations and its version. */
  async seedState(spaceId: string): Promise<SeedState> {
    const [held, space] = await Promise.all([
      this.live(spaceId),
      this.prisma.vmidSpace.findUnique({ where: { spaceId }, select: { version: true } }),
    ]);
    return { held, version: space ? Number(space.version) : 0 };
  }

  /** The space has reached `version` (kept if higher than what is recorded). */
  async reached(spaceId: string, version: number): Promise<void> {
    await this.prisma.$executeRaw`
      INSERT INTO vmid_spaces (space_id, version) VALUES (${spaceId}, ${version})
      ON CONFLICT (space_id) DO UPDATE SET version = EXCLUDED.version, updated_at = CURRENT_TIMESTAMP
        WHERE vmid_spaces.version < EXCLUDED.version`;
  }

  /**
   * Records reservations the fast store just made, in one statement, and the space's version
   * with them (it never goes backwards): answers the VMIDs recorded. One missing: the record
   * holds a live one of it already (the fast store lost it: put the space's live ones back
   * there; this one must not stand). Rows whose time is up are taken over.
   */
  async putMany(spaceId: string, held: readonly HeldReservation[], version: number): Promise<Set<number>> {
    // A plain statement (db.sql): one a batch, on the reservations' hot path.
    const rows = await this.sql<{ vmid: number }>(
      `WITH space AS (
         INSERT INTO vmid_spaces (space_id, version) VALUES ($1, $2)
         ON CONFLICT (space_id) DO UPDATE SET version = EXCLUDED.version, updated_at = CURRENT_TIMESTAMP
           WHERE vmid_spaces.version < EXCLUDED.version
       )
       INSERT INTO vmid_reservations (space_id, vmid, owner_id, expires_at)
       SELECT $1, r.vmid, r.owner_id, r.expires_at
         FROM unnest($3::int[], $4::text[], $5::timestamptz[]) AS r(vmid, owner_id, expires_at)
       ON CONFLICT (space_id, vmid) DO UPDATE
         SET owner_id = EXCLUDED.owner_id, expires_at = EXCLUDED.expires_at, created_at = CURRENT_TIMESTAMP
         WHERE vmid_reservations.expires_at <= CURRENT_TIMESTAMP
       RETURNING vmid`,
      [spaceId, version, held.map((r) => r.vmid), held.map((r) => r.owner), held.map((r) => r.expiresAt.toISOString())],
    );
    this.purgeNowAndThen();
    return new Set(rows.map((r) => r.vmid));
  }

  /**
   * Ends a reservation (only `owner`'s; any holder's when owner is null). true when a live one
   * ended (a row whose time was up goes too, but it had ended already).
   */
  async remove(spaceId: string, vmid: number, owner: string | null): Promise<boolean> {
    const rows =
      owner === null
        ? await this.prisma.$queryRaw<Array<{ live: boolean }>>`
            DELETE FROM vmid_reservations WHERE space_id = ${spaceId} AND vmid = ${vmid}
            RETURNING expires_at > CURRENT_TIMESTAMP AS live`
        : await this.prisma.$queryRaw<Array<{ live: boolean }>>`
            DELETE FROM vmid_reservations WHERE space_id = ${spaceId} AND vmid = ${vmid} AND owner_id = ${owner}
            RETURNING expires_at > CURRENT_TIMESTAMP AS live`;
    return rows.some((r) => r.live);
  }

  /** The space is gone (its last registration was deleted); its version stays recorded. */
  async removeSpace(spaceId: string): Promise<void> {
    await this.prisma.vmidReservation.deleteMany({ where: { spaceId } });
  }

  /** Long-expired rows go, now and then, without holding up the reservation that triggers it. */
  private purgeNowAndThen(): void {
    const now = Date.now();
    if (now - this.lastPurge < PURGE_EVERY_MS) return;
    this.lastPurge = now;
    void this.prisma.vmidReservation
      .deleteMany({ where: { expiresAt: { lt: new Date(now - PURGE_AFTER_MS) } } })
      .catch(() => undefined);
  }
}
