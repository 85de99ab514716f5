import type { Viewer } from '../auth/auth-service.js';
import type { Prisma, PrismaClient } from '../db/database.js';
import { isForeignKeyViolation, isUniqueViolation } from '../db/prisma-errors.js';
import { ConflictError, NotFoundError } from '../errors.js';
import { lockCluster, type NodeService } from './node-service.js';
import { isUuid } from './node-validation.js';
import type { VmidHooks } from './vmid-hooks.js';

export type ContainerQuery = { include?: Prisma.ContainerInclude; select?: Prisma.ContainerSelect };

export interface RegisterContainerInput {
  nodeId: string;
  vmid: number;
  hostname?: string | null;
}

/** Containers a client created on one of its nodes, recorded so the VMID stays accounted for. */
export class ContainerService {
  constructor(
    private readonly prisma: PrismaClient,
    private readonly nodes: NodeService,
    private readonly vmids: VmidHooks,
  ) {}

  async register(viewer: Viewer, input: RegisterContainerInput, query: ContainerQuery = {}) {
    const node = await this.nodes.get(viewer, input.nodeId);
    const ref = await this.nodes.ref(viewer, node.id);
    let container;
    try {
      container = await this.prisma.$transaction(async (tx) => {
        // One VMID is one guest of the cluster, whichever registration (of whichever user)
        // records it: registrations of one cluster take turns on its lock.
        if (node.clusterId) {
          await lockCluster(tx, node.clusterId);
          const elsewhere = await tx.container.count({
            where: { vmid: input.vmid, node: { clusterId: node.clusterId } },
          });
          if (elsewhere > 0)
            throw new ConflictError(`VMID ${input.vmid} is already registered on this node's cluster.`, {
              vmid: input.vmid,
            });
        }
        await this.vmids.assertRegistrable(ref, input.vmid);
        return tx.container.create({
          ...query,
          data: { nodeId: node.id, vmid: input.vmid, hostname: input.hostname || null },
        });
      });
    } catch (err) {
      if (isUniqueViolation(err)) {
        throw new ConflictError(`VMID ${input.vmid} is already registered on node "${node.name}".`, {
          vmid: input.vmid,
        });
      }
      if (isForeignKeyViolation(err)) throw new NotFoundError('Node', input.nodeId);
      throw err;
    }
    await this.vmids.containerRegistered(ref, input.vmid);
    return container;
  }

  async unregister(viewer: Viewer, id: string): Promise<boolean> {
    const container = isUuid(id)
      ? await this.prisma.container.findFirst({
          where: { id, node: { userId: viewer.userId } },
          include: { node: { select: { id: true, userId: true } } },
        })
      : null;
    if (!container) throw new NotFoundError('Container', id);
    const { count } = await this.prisma.container.deleteMany({ where: { id: container.id } });
    if (count === 0) throw new NotFoundError('Container', id);
    await this.vmids.containerUnregistered(await this.nodes.ref(viewer, container.node.id), container.vmid);
    return true;
  }
}
