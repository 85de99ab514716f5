import { builder } from '../graphql/builder.js';
import type { GraphQLContext } from '../graphql/context.js';
import type { NodeRef, VmidEvent, VmidReservation, VmidSet } from './types.js';
import { DEFAULT_RESERVATION_TTL_S } from './validation.js';

const VmidSetRef = builder.objectRef<VmidSet>('VmidSet').implement({
  description: "The VMIDs in use on a node's cluster (QEMU and LXC) and the live reservations.",
  fields: (t) => ({
    nodeId: t.exposeID('nodeId'),
    taken: t.exposeIntList('taken', { description: 'Guests Proxmox reports, ascending.' }),
    reserved: t.exposeIntList('reserved', { description: 'Live reservations, ascending.' }),
    fromCache: t.exposeBoolean('fromCache', { description: 'False when this request had to ask Proxmox.' }),
    refreshedAt: t.expose('refreshedAt', { type: 'DateTime' }),
    expiresAt: t.expose('expiresAt', { type: 'DateTime' }),
    version: t.exposeInt('version', { description: "Grows by one on every change to this node's set." }),
  }),
});

const VmidReservationRef = builder.objectRef<VmidReservation>('VmidReservation').implement({
  fields: (t) => ({
    nodeId: t.exposeID('nodeId'),
    vmid: t.exposeInt('vmid'),
    expiresAt: t.expose('expiresAt', { type: 'DateTime' }),
  }),
});

const VmidEventKindEnum = builder.enumType('VmidEventKind', {
  values: {
    INVALIDATED: { description: 'The cached set was dropped; the next read asks Proxmox.' },
    REFRESHED: { description: 'The set changed after asking Proxmox (or a container was registered); vmids is the new set.' },
    RESERVED: { description: 'vmids holds the VMID just reserved.' },
    RELEASED: {
      description:
        'vmids holds the VMIDs whose reservations ended, ascending: the one released (or consumed), or every one that lapsed at once when its time was up.',
    },
    SYNC: { description: "A subscription's first event (and after a reconnect): the current version, nothing changed." },
    DELETED: {
      description:
        "The node was deleted: its last event. A subscription to this node alone completes after it; one to every node of the caller goes on with the others.",
    },
  } as const,
});

const VmidEventRef = builder.objectRef<VmidEvent>('VmidEvent').implement({
  fields: (t) => ({
    nodeId: t.exposeID('nodeId'),
    kind: t.field({ type: VmidEventKindEnum, resolve: (e) => e.kind }),
    version: t.exposeInt('version'),
    at: t.expose('at', { type: 'DateTime' }),
    vmids: t.exposeIntList('vmids', { nullable: true }),
    expiresAt: t.field({
      type: 'DateTime',
      nullable: true,
      description: 'RESERVED: when the reservation lapses unless it is released or consumed first (a RELEASED event follows then). Null for other kinds.',
      resolve: (e) => e.expiresAt ?? null,
    }),
  }),
});

/** The caller's node as the VMID capability needs it; NOT_FOUND for anyone else's. */
function ownedNode(ctx: GraphQLContext, nodeId: string | number): Promise<NodeRef> {
  return ctx.services.nodes.ref(ctx.viewer, String(nodeId));
}

builder.prismaObjectField('ProxmoxNode', 'vmids', (t) =>
  t.field({
    type: VmidSetRef,
    description: 'Same as Query.vmidsTaken(nodeId: id).',
    select: { id: true },
    resolve: async (node, _args, ctx) => ctx.services.vmids.getCachedVmids(await ownedNode(ctx, node.id)),
  }),
);

builder.queryFields((t) => ({
  vmidsTaken: t.field({
    type: VmidSetRef,
    description: 'Served from the cache; asks Proxmox on a miss (once for all concurrent callers).',
    args: { nodeId: t.arg.id({ required: true }) },
    resolve: async (_root, args, ctx) => ctx.services.vmids.getCachedVmids(await ownedNode(ctx, args.nodeId)),
  }),
  isVmidTaken: t.boolean({
    description: 'Taken by a guest or reserved.',
    args: { nodeId: t.arg.id({ required: true }), vmid: t.arg.int({ required: true }) },
    resolve: async (_root, args, ctx) => ctx.services.vmids.isVmidTaken(await ownedNode(ctx, args.nodeId), args.vmid),
  }),
  nextFreeVmid: t.int({
    description: 'The lowest VMID ≥ min that is neither taken nor reserved. Reserves nothing: use reserveVmid.',
    args: { nodeId: t.arg.id({ required: true }), min: t.arg.int({ defaultValue: 100 }) },
    resolve: async (_root, args, ctx) => ctx.services.vmids.nextFreeVmid(await ownedNode(ctx, args.nodeId), args.min ?? 100),
  }),
}));

builder.mutationFields((t) => ({
  refreshVmidCache: t.field({
    type: VmidSetRef,
    description: 'Asks Proxmox now and replaces the cached set. Counts against the Proxmox rate limit (as every cache fill does).',
    args: { nodeId: t.arg.id({ required: true }) },
    resolve: async (_root, args, ctx) => ctx.services.vmids.refreshVmidCache(await ownedNode(ctx, args.nodeId)),
  }),
  invalidateVmidCache: t.boolean({
    description: 'Drops the cached set (the next read asks Proxmox). True when a cached set existed.',
    args: { nodeId: t.arg.id({ required: true }) },
    resolve: async (_root, args, ctx) => ctx.services.vmids.invalidateVmidCache(await ownedNode(ctx, args.nodeId)),
  }),
  reserveVmid: t.field({
    type: VmidReservationRef,
    description:
      'Holds a VMID for ttlSeconds (1…86400), atomically across instances. Without vmid: the lowest free one ≥ min. CONFLICT when taken or reserved.',
    args: {
      nodeId: t.arg.id({ required: true }),
      vmid: t.arg.int(),
      ttlSeconds: t.arg.int({ defaultValue: DEFAULT_RESERVATION_TTL_S }),
      min: t.arg.int({ defaultValue: 100, description: 'Lower bound when no vmid is given.' }),
    },
    resolve: async (_root, args, ctx) => {
      const node = await ownedNode(ctx, args.nodeId);
      await ctx.services.rateLimiter.consume('reservations', ctx.viewer.userId);
      return ctx.services.vmids.reserveVmid(node, args.vmid, args.ttlSeconds ?? DEFAULT_RESERVATION_TTL_S, args.min ?? 100);
    },
  }),
  releaseVmid: t.boolean({
    description: 'Ends a reservation. False when there was none.',
    args: { nodeId: t.arg.id({ required: true }), vmid: t.arg.int({ required: true }) },
    resolve: async (_root, args, ctx) => ctx.services.vmids.releaseVmid(await ownedNode(ctx, args.nodeId), args.vmid),
  }),
}));

builder.subscriptionField('vmidEvents', (t) =>
  t.field({
    type: VmidEventRef,
    description: 'Changes to one node\'s VMID set, or to every node of the caller when nodeId is omitted. The first event is SYNC with the current version; DELETED ends a node\'s events (and a subscription to that node alone).',
    args: { nodeId: t.arg.id() },
    subscribe: async (_root, args, ctx) => {
      if (args.nodeId != null) return ctx.services.vmids.subscribeNode(await ownedNode(ctx, args.nodeId));
      return ctx.services.vmids.subscribeUser(ctx.viewer.userId, await ctx.services.nodes.refs(ctx.viewer));
    },
    resolve: (event) => event,
  }),
);
