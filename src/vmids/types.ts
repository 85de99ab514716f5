/**
 * The shapes the VMID capability hands to its callers. They mirror the GraphQL types of the
 * contract (VmidSet, VmidReservation, VmidEvent) so resolvers can return them unchanged.
 */

/** Proxmox accepts guest ids from 100 to 999,999,999 (pve-common `pve-vmid`). */
export const VMID_MIN = 100;
export const VMID_MAX = 999_999_999;

/**
 * A registration as this capability needs it: its id, its owner, and its VMID space — the
 * id of the Proxmox cluster it reaches, shared by every registration of that cluster (any
 * user, any member host), or its own id when the cluster could not be identified.
 */
export interface NodeRef {
  id: string;
  userId: string;
  spaceId: string;
}

export interface VmidSet {
  nodeId: string;
  /** Guests (LXC and QEMU) Proxmox reported, ascending. */
  taken: number[];
  /** Live reservations, ascending. */
  reserved: number[];
  /** false when this request found no cached set and the set had to come from Proxmox. */
  fromCache: boolean;
  refreshedAt: Date;
  expiresAt: Date;
  /** Grows by one on every change to this node's set (see VmidEvent). */
  version: number;
}

export interface VmidReservation {
  nodeId: string;
  vmid: number;
  expiresAt: Date;
  /**
   * Only a keyed reserveVmid answers true: the key's reservation was consumed (its VMID is a
   * guest now) and nothing is reserved; expiresAt is the expiry the reservation had.
   */
  consumed?: boolean;
}

/**
 * `SYNC` is never published: a subscription emits it first (and again after a lost pub/sub
 * connection came back with a newer version) to tell the subscriber the node's current
 * version, so it can tell whether it missed anything. `DELETED` is a node's last event: the
 * node was deleted (a subscription to that node alone completes after it).
 */
export type VmidEventKind = 'INVALIDATED' | 'REFRESHED' | 'RESERVED' | 'RELEASED' | 'SYNC' | 'DELETED';

export interface VmidEvent {
  nodeId: string;
  kind: VmidEventKind;
  version: number;
  at: Date;
  /**
   * RESERVED / RELEASED: the VMIDs reserved or released, ascending. REFRESHED: null as
   * published (the set does not travel; GraphQL reads it when a subscriber asks for it).
   * INVALIDATED, SYNC and DELETED: null.
   */
  vmids: number[] | null;
  /** REFRESHED: VMIDs that became taken since the previous version, ascending; else empty. */
  added: number[];
  /** REFRESHED: VMIDs that stopped being taken since the previous version, ascending; else empty. */
  removed: number[];
  /**
   * DELETED of one registration of a shared VMID space (the space goes on; see
   * VmidStore.announceGone): only that registration's subscribers are told.
   */
  registration?: string;
  /** RESERVED: when the reservation lapses unless it is released or consumed first. */
  expiresAt?: Date;
}
