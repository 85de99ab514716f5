import type { SecretBox } from '../crypto/secret-box.js';
import type { Prisma, PrismaClient } from '../db/database.js';
import type { ProxmoxNode, ProxmoxNodeEndpoint } from '../db/generated/prisma/client.js';
import { ConflictError, DomainError, ErrorCode, NotFoundError } from '../errors.js';
import type { ProxmoxClient, ProxmoxGuest, ProxmoxTarget, ProxmoxTask, VmidRange } from '../proxmox/index.js';
import { lruCache } from '../cache/lru.js';
import { EndpointHealth } from './endpoint-health.js';

/** A registration with its fallback endpoints, in order (what a ProxmoxTarget is made from). */
export type NodeWithEndpoints = ProxmoxNode & { fallbackEndpoints: ProxmoxNodeEndpoint[] };

export const WITH_ENDPOINTS = {
  fallbackEndpoints: { orderBy: { position: 'asc' } },
} as const satisfies Prisma.ProxmoxNodeInclude;

/** How long a registration's decrypted Proxmox target is reused (targetById). */
const TARGET_CACHE_MS = 5_000;

/** Bound into each ciphertext, so a value copied to another row or column will not decrypt. */
export function secretContext(nodeId: string, field: 'tokenSecret' | 'sshPassword'): string {
  return `proxmox_node:${nodeId}:${field}`;
}

/**
 * The Proxmox side of the registrations: each one's decrypted target (with its endpoints'
 * health), and what its cluster says about VMIDs. Node management and the VMID capability
 * both ask Proxmox through it, so neither needs the other to be built first.
 */
export class ClusterTargets {
  /** Decrypted Proxmox targets by registration id (targetById). */
  private readonly targets = lruCache<string, ProxmoxTarget>({ max: 10_000, now: Date.now });
  /** lastError / lastOkAt of every endpoint, from the client's reports. */
  readonly health: EndpointHealth;

  constructor(
    private readonly prisma: PrismaClient,
    private readonly secrets: SecretBox,
    private readonly proxmox: ProxmoxClient,
  ) {
    this.health = new EndpointHealth(prisma);
  }

  /** Stops the endpoint health writes (pending ones are dropped). */
  close(): void {
    this.health.close();
  }

  /** This instance changed or deleted the registration: its kept target is dropped at once. */
  forget(nodeId: string): void {
    this.targets.delete(nodeId);
  }

  /**
   * The VMIDs in use on the node's cluster (the VMID capability's source of truth): every
   * guest Proxmox lists, and every container registered through pvegraph on any registration
   * of the cluster, listed or not yet (a client registers right after its create call;
   * Proxmox may list the guest a moment later). `guests`: the listing itself (one request),
   * which the VMID capability keeps with the set (ProxmoxNode.guests); a registered container
   * that Proxmox does not list yet is taken, but not among them.
   */
  async takenVmids(nodeId: string): Promise<{ taken: number[]; guests: ProxmoxGuest[] }> {
    const node = await this.prisma.proxmoxNode.findUnique({ where: { id: nodeId }, include: WITH_ENDPOINTS });
    if (!node) throw new NotFoundError('Node', nodeId);
    const guests = await this.proxmox.guests(this.targetOf(node));
    // Read after Proxmox answered: a container registered during the (slow) Proxmox call is
    // still counted; one registered after this read makes the fill stale (it invalidates).
    const registered = await this.prisma.container.findMany({
      where: node.clusterId ? { node: { clusterId: node.clusterId } } : { nodeId },
      select: { vmid: true },
    });
    return { taken: [...guests.map((g) => g.vmid), ...registered.map((c) => c.vmid)], guests };
  }

  /** Is `vmid` free in the node's whole cluster now? Proxmox's own check (it reserves nothing). */
  async isVmidFree(nodeId: string, vmid: number): Promise<boolean> {
    const target = await this.targetById(nodeId);
    try {
      await this.proxmox.nextId(target, vmid);
      return true;
    } catch (err) {
      if (err instanceof ConflictError) return false;
      throw err;
    }
  }

  /** The cluster's `next-id` range; null when none is set or the token may not read it. */
  async nextIdRange(nodeId: string): Promise<VmidRange | null> {
    try {
      return await this.proxmox.nextIdRange(await this.targetById(nodeId));
    } catch (err) {
      if (err instanceof DomainError && err.code === ErrorCode.PROXMOX_FORBIDDEN) return null;
      throw err;
    }
  }

  /**
   * Recent tasks of the registration's cluster (GET /cluster/tasks): the cluster watcher's
   * cheap probe for guests created or destroyed behind pvegraph's back.
   */
  async clusterTasks(nodeId: string): Promise<ProxmoxTask[]> {
    return this.proxmox.tasks(await this.targetById(nodeId));
  }

  /**
   * The registration's Proxmox target, kept for TARGET_CACHE_MS: a reservation asks Proxmox
   * once each (its confirmation), and reading and decrypting the row every time cost more
   * than the call. This instance's own changes to the registration drop it at once; a change
   * made through another instance is seen within TARGET_CACHE_MS.
   */
  async targetById(nodeId: string): Promise<ProxmoxTarget> {
    const kept = this.targets.get(nodeId);
    if (kept) return kept;
    const readAt = Date.now(); // the lifetime counts from before the read
    const node = await this.prisma.proxmoxNode.findUnique({ where: { id: nodeId }, include: WITH_ENDPOINTS });
    if (!node) throw new NotFoundError('Node', nodeId);
    const target = this.targetOf(node);
    const left = readAt + TARGET_CACHE_MS - Date.now();
    if (left > 0) this.targets.set(nodeId, target, { ttl: left });
    return target;
  }

  /** The stored endpoints, primary first; every outcome goes to the endpoint health record. */
  targetOf(node: NodeWithEndpoints): ProxmoxTarget {
    return {
      host: node.host,
      port: node.port,
      tokenId: node.tokenId,
      tokenSecret: this.secrets.decrypt(node.tokenSecretEnc, secretContext(node.id, 'tokenSecret')),
      tlsFingerprint: node.tlsFingerprint,
      allowInsecureTls: node.allowInsecureTls,
      fallbacks: node.fallbackEndpoints.map((e) => ({ host: e.host, port: e.port, tlsFingerprint: e.tlsFingerprint })),
      onEndpointResult: (r) => this.health.record(node.id, r),
    };
  }
}
