import type { PrismaClient } from '../db/database.js';
import { BadUserInputError } from '../errors.js';

/** Keys are what a pipeline names its attempt by: a job id, a hostname, a Terraform address. */
export const RESERVATION_KEY_MAX = 200;
/** 1…200 characters, none of them a control, format, surrogate, private-use or unassigned one. */
const KEY_PATTERN = new RegExp(`^\\P{C}{1,${RESERVATION_KEY_MAX}}$`, 'u');

export function checkReservationKey(key: string): string {
  if (!KEY_PATTERN.test(key)) {
    const message = `must be 1 to ${RESERVATION_KEY_MAX} printable characters`;
    throw new BadUserInputError(`key ${message}.`, { key: message });
  }
  return key;
}

/** What a key answered last: the VMID and the expiry its reservation was given. */
export interface KeyEntry {
  vmid: number;
  expiresAt: Date;
}

/** Rows unused this long after their reservation ended are deleted. */
const PURGE_AFTER_MS = 30 * 86_400_000;
/** How often (at most) one instance purges. */
const PURGE_EVERY_MS = 600_000;

/**
 * Idempotency keys of reserveVmid, in the database (table vmid_reservation_keys): per VMID
 * space, owner and key, the VMID the key answered and its reservation's expiry. Only a record:
 * whether the entry still answers (the reservation lives, or the VMID became a guest) is for
 * VmidService to decide, from the store and Proxmox.
 */
export class ReservationKeys {
  private lastPurge = 0;

  constructor(private readonly prisma: PrismaClient) {}

  /** The key's entry, if any; marks it used (an entry in use is never purged). */
  async get(spaceId: string, ownerId: string, key: string): Promise<KeyEntry | null> {
    const rows = await this.prisma.$queryRaw<Array<{ vmid: number; expires_at: Date }>>`
      UPDATE vmid_reservation_keys SET used_at = CURRENT_TIMESTAMP
      WHERE space_id = ${spaceId} AND owner_id = ${ownerId} AND key = ${key}
      RETURNING vmid, expires_at`;
    const row = rows[0];
    return row ? { vmid: row.vmid, expiresAt: new Date(row.expires_at) } : null;
  }

  /**
   * Makes the key answer `entry`, if the key still answers `previous` (null: has no entry).
   * false when another call got there first: its entry stands (the unique key decides).
   */
  async claim(
    spaceId: string,
    ownerId: string,
    key: string,
    entry: KeyEntry,
    previous: KeyEntry | null,
  ): Promise<boolean> {
    this.purgeNowAndThen();
    if (!previous) {
      const rows = await this.prisma.$queryRaw<Array<{ vmid: number }>>`
        INSERT INTO vmid_reservation_keys (space_id, owner_id, key, vmid, expires_at)
        VALUES (${spaceId}, ${ownerId}, ${key}, ${entry.vmid}, ${entry.expiresAt})
        ON CONFLICT (space_id, owner_id, key) DO NOTHING
        RETURNING vmid`;
      return rows.length === 1;
    }
    const rows = await this.prisma.$queryRaw<Array<{ vmid: number }>>`
      UPDATE vmid_reservation_keys
        SET vmid = ${entry.vmid}, expires_at = ${entry.expiresAt}, created_at = CURRENT_TIMESTAMP, used_at = CURRENT_TIMESTAMP
      WHERE space_id = ${spaceId} AND owner_id = ${ownerId} AND key = ${key}
        AND vmid = ${previous.vmid} AND expires_at = ${previous.expiresAt}
      RETURNING vmid`;
    return rows.length === 1;
  }

  /**
   * Whether `ownerId` registered a container with `vmid` on a registration of the space
   * (registerContainer): the key's reservation was consumed by the caller's own guest.
   */
  async registered(spaceId: string, ownerId: string, vmid: number): Promise<boolean> {
    const rows = await this.prisma.$queryRaw<Array<{ found: number }>>`
      SELECT 1 AS found FROM containers c JOIN proxmox_nodes n ON n.id = c.node_id
      WHERE c.vmid = ${vmid} AND n.user_id::text = ${ownerId} AND (n.cluster_id = ${spaceId} OR n.id::text = ${spaceId})
      LIMIT 1`;
    return rows.length > 0;
  }

  /** Long-unused rows go, now and then, without holding up the reservation that triggers it. */
  private purgeNowAndThen(): void {
    const now = Date.now();
    if (now - this.lastPurge < PURGE_EVERY_MS) return;
    this.lastPurge = now;
    const before = new Date(now - PURGE_AFTER_MS);
    void this.prisma.$executeRaw`
      DELETE FROM vmid_reservation_keys WHERE used_at < ${before} AND expires_at < ${before}`.catch(() => undefined);
  }
}
