import type { NodeRef } from '../vmids/types.js';

export type { NodeRef };

/**
 * What node management tells the VMID capability. Node code calls these and nothing else of
 * it, so neither capability reaches into the other's storage.
 */
export interface VmidHooks {
  /** CONFLICT when `vmid` may not be recorded for the node's owner (another user holds a reservation of it). */
  assertRegistrable(node: NodeRef, vmid: number): Promise<void>;
  /** A container was recorded for `vmid`: consume a reservation of it, refresh the set. */
  containerRegistered(node: NodeRef, vmid: number): Promise<void>;
  containerUnregistered(node: NodeRef, vmid: number): Promise<void>;
  /** Host, port or credentials changed: the cached set may be another cluster's. */
  nodeConnectionChanged(node: NodeRef): Promise<void>;
  /**
   * A registration was created: its VMID space, deleted with the cluster's last registration
   * (a tombstone for a day), works again.
   */
  nodeCreated(node: NodeRef): Promise<void>;
  /** `lastOfSpace`: no other registration (of any user) shares the node's VMID space. */
  nodeDeleted(node: NodeRef, lastOfSpace: boolean): Promise<void>;
}
