import { BadUserInputError } from '../errors.js';
import { builder } from '../graphql/builder.js';
import type { GraphQLContext } from '../graphql/context.js';
import type { NodeRef, VmidEvent, VmidReservation, VmidSet } from './types.js';
import type { Guest } from './store.js';
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
    consumed: t.boolean({
      description:
        'True only for reserveVmid with a key whose reservation was consumed: its VMID is a guest now (a container the caller registered, or a guest Proxmox lists), nothing is reserved, and expiresAt is the expiry the reservation had.',
      resolve: (r) => r.consumed ?? false,
    }),
  }),
});

const VmidEventKindEnum = builder.enumType('VmidEventKind', {
  values: {
    INVALIDATED: { description: 'The cached set was dropped; the next read asks Proxmox.' },
    REFRESHED: {
      description:
        'The set was written after asking Proxmox (or a container was registered): added and removed say what changed since the previous version; vmids is the whole set.',
    },
    RESERVED: {
      description:
        'vmids holds the VMIDs just reserved, ascending: one, or several reserved together (concurrent reservations of the cluster are decided in batches) with one expiry.',
    },
    RELEASED: {
      description:
        'vmids holds the VMIDs whose reservations ended, ascending: the one released (or consumed), or every one that lapsed at once when its time was up.',
    },
    SYNC: {
      description: "A subscription's first event (and after a reconnect): the current version, nothing changed.",
    },
    DELETED: {
      description:
        'The node was deleted: its last event. A subscription to this node alone completes after it; one to every node of the caller goes on with the others.',
    },
  } as const,
});

const VmidEventRef = builder.objectRef<VmidEvent>('VmidEvent').implement({
  fields: (t) => ({
    nodeId: t.exposeID('nodeId'),
    kind: t.field({ type: VmidEventKindEnum, resolve: (e) => e.kind }),
    version: t.exposeInt('version'),
    at: t.expose('at', { type: 'DateTime' }),
    vmids: t.intList({
      nullable: true,
      description:
        "RESERVED / RELEASED: the VMIDs reserved or released. REFRESHED: the whole taken set, read when the event is delivered (only a subscriber that asks for it pays for it; it may include later versions' changes: added/removed are exact). Null for other kinds.",
      resolve: async (e, _args, ctx) => {
        if (e.kind !== 'REFRESHED') return e.vmids;
        return (await ctx.services.vmids.getCachedVmids(await ownedNode(ctx, e.nodeId))).taken;
      },
    }),
    added: t.exposeIntList('added', {
      description: 'REFRESHED: VMIDs that became taken since the previous version, ascending. Empty for other kinds.',
    }),
    removed: t.exposeIntList('removed', {
      description:
        'REFRESHED: VMIDs that stopped being taken since the previous version, ascending. Empty for other kinds.',
    }),
    expiresAt: t.field({
      type: 'DateTime',
      nullable: true,
      description:
        'RESERVED: when the reservation lapses unless it is released or consumed first (a RELEASED event follows then). Null for other kinds.',
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

const GuestTypeEnum = builder.enumType('GuestType', {
  values: { LXC: { description: 'A container.' }, QEMU: { description: 'A virtual machine.' } } as const,
});

const GuestRef = builder.objectRef<Guest>('Guest').implement({
  description: "A guest of the node's cluster, as its listing (the one the VMID cache was filled from) reports it.",
  fields: (t) => ({
    vmid: t.exposeInt('vmid'),
    type: t.field({ type: GuestTypeEnum, resolve: (g) => (g.type === 'lxc' ? 'LXC' : 'QEMU') }),
    name: t.exposeString('name', { nullable: true }),
    node: t.exposeString('node', { nullable: true, description: 'The cluster member it is on.' }),
    status: t.exposeString('status', {
      nullable: true,
      description: 'e.g. running, stopped; unknown while its member is offline.',
    }),
  }),
});

builder.prismaObjectField('ProxmoxNode', 'guests', (t) =>
  t.field({
    type: [GuestRef],
    description:
      'Guests of the cluster (QEMU and LXC), ascending by vmid, from the same cached listing as vmids: no Proxmox call while that is cached. Registered containers Proxmox does not list yet are in vmids.taken, not here.',
    select: { id: true },
    resolve: async (node, _args, ctx) => ctx.services.vmids.guests(await ownedNode(ctx, node.id)),
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
    resolve: async (_root, args, ctx) =>
      ctx.services.vmids.nextFreeVmid(await ownedNode(ctx, args.nodeId), args.min ?? 100),
  }),
}));

builder.mutationFields((t) => ({
  refreshVmidCache: t.field({
    type: VmidSetRef,
    description:
      'Asks Proxmox now and replaces the cached set. Counts against the Proxmox rate limit (as every cache fill does).',
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
      'Holds a VMID for ttlSeconds (1…86400), atomically across instances. Without vmid: the lowest free one ≥ min. CONFLICT when taken or reserved. With a key, a repeated call answers the same VMID (see key).',
    args: {
      nodeId: t.arg.id({ required: true }),
      vmid: t.arg.int(),
      ttlSeconds: t.arg.int({ defaultValue: DEFAULT_RESERVATION_TTL_S }),
      min: t.arg.int({ defaultValue: 100, description: 'Lower bound when no vmid is given.' }),
      key: t.arg.string({
        description:
          "Idempotency key (1…200 printable characters), per caller and cluster: while the key's reservation lives, a call with the same key answers it (same VMID and expiresAt) instead of reserving another; once it was consumed (the VMID is a guest: registered, or listed by Proxmox) it answers that VMID with consumed true. After a release or lapse without a guest, the key reserves again (its former VMID when free). Concurrent calls with one key answer one reservation.",
      }),
    },
    resolve: async (_root, args, ctx) => {
      const node = await ownedNode(ctx, args.nodeId);
      await ctx.services.rateLimiter.consume('reservations', ctx.viewer.userId);
      return ctx.services.vmids.reserveVmid(
        node,
        args.vmid,
        args.ttlSeconds ?? DEFAULT_RESERVATION_TTL_S,
        args.min ?? 100,
        args.key,
      );
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
    description:
      "Changes to one node's VMID set, or to every node of the caller when nodeId is omitted. The first event is SYNC with the current version; DELETED ends a node's events (and a subscription to that node alone). With afterVersion (only with nodeId): first every retained event with a greater version, in order (nothing when none was missed), then live; SYNC instead when they are no longer retained (the last 1000 changes of the cluster, up to an hour old).",
    args: {
      nodeId: t.arg.id(),
      afterVersion: t.arg.int({ description: 'Resume after this version (only with nodeId).' }),
    },
    subscribe: async (_root, args, ctx) => {
      if (args.afterVersion != null) {
        if (args.nodeId == null)
          throw new BadUserInputError('afterVersion needs a nodeId.', { afterVersion: 'only with nodeId' });
        if (args.afterVersion < 0)
          throw new BadUserInputError('afterVersion must not be negative.', { afterVersion: 'must be 0 or more' });
      }
      if (args.nodeId != null)
        return ctx.services.vmids.subscribeNode(await ownedNode(ctx, args.nodeId), args.afterVersion ?? undefined);
      return ctx.services.vmids.subscribeUser(ctx.viewer.userId, await ctx.services.nodes.refs(ctx.viewer));
    },
    resolve: (event) => event,
  }),
);
