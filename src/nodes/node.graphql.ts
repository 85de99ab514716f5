import type { ClusterMember, ConnectionTestResult } from '../proxmox/index.js';
import { vmidSpaceOf } from '../clusters/identity.js';
import { builder } from '../graphql/builder.js';
import * as rules from './node-validation.js';

/** One endpoint of a registration, with what pvegraph last saw of it. */
interface NodeEndpointShape {
  host: string;
  port: number;
  tlsFingerprint: string | null;
  lastError: string | null;
  lastOkAt: Date | null;
}

const NodeEndpointRef = builder.objectRef<NodeEndpointShape>('NodeEndpoint').implement({
  description:
    'An HTTPS endpoint of a registration. The token and allowInsecureTls of the registration apply to all of them.',
  fields: (t) => ({
    host: t.exposeString('host'),
    port: t.exposeInt('port'),
    tlsFingerprint: t.exposeString('tlsFingerprint', {
      nullable: true,
      description: "This endpoint's own pinned SHA-256, upper-case colon hex.",
    }),
    lastError: t.exposeString('lastError', {
      nullable: true,
      description:
        'Why the last call that tried this endpoint failed on it (unreachable, timeout, 5xx, TLS, 401); null once it answers again, or when never tried.',
    }),
    lastOkAt: t.expose('lastOkAt', {
      type: 'DateTime',
      nullable: true,
      description: 'When this endpoint last answered (refreshed at most once a minute while it keeps answering).',
    }),
  }),
});

builder.prismaObject('ProxmoxNode', {
  description: 'A Proxmox VE endpoint of the caller. tokenSecret and sshPassword are write-only.',
  fields: (t) => ({
    id: t.exposeID('id'),
    name: t.exposeString('name', { description: 'Unique per user.' }),
    host: t.exposeString('host'),
    port: t.exposeInt('port'),
    tokenId: t.exposeString('tokenId', { description: 'USER@REALM!TOKENID' }),
    isDefault: t.exposeBoolean('isDefault'),
    hasSshPassword: t.boolean({ select: { sshPasswordEnc: true }, resolve: (node) => node.sshPasswordEnc !== null }),
    tlsFingerprint: t.exposeString('tlsFingerprint', {
      nullable: true,
      description: 'Pinned SHA-256 of the certificate, upper-case colon hex.',
    }),
    allowInsecureTls: t.exposeBoolean('allowInsecureTls'),
    pveVersion: t.exposeString('pveVersion', {
      nullable: true,
      description: 'From the last successful connection test.',
    }),
    clusterName: t.exposeString('clusterName', { nullable: true, description: 'Null for a standalone node.' }),
    pveNodeNames: t.exposeStringList('pveNodeNames', { description: 'Node names seen at the last test.' }),
    presentedFingerprint: t.exposeString('presentedFingerprint', {
      nullable: true,
      description: 'SHA-256 of the certificate the host presented at the last successful test.',
    }),
    lastTestedAt: t.expose('lastTestedAt', { type: 'DateTime', nullable: true }),
    clusterId: t.id({
      description:
        "The Proxmox cluster (or standalone host) this registration reaches, from its members' certificate fingerprints. Every registration of one cluster (any user, any member host) has the same clusterId and shares one VMID space. When the token cannot read the fingerprints (clusterIdentified false) it is the registration's own id: a VMID space of its own.",
      select: { id: true, clusterId: true },
      resolve: (node) => vmidSpaceOf(node),
    }),
    clusterIdentified: t.boolean({
      description:
        'False when the cluster could not be identified (the token lacks Sys.Audit on /) or not yet (a registration from before identity, until its next start-up).',
      select: { clusterId: true },
      resolve: (node) => node.clusterId !== null,
    }),
    endpoints: t.field({
      type: [NodeEndpointRef],
      description:
        'Every endpoint of the registration, primary first (its own host, port and tlsFingerprint), then the fallbacks in order. Calls fail over to the next one when an endpoint is unreachable (network, timeout, 5xx), never on an auth or TLS refusal.',
      select: {
        host: true,
        port: true,
        tlsFingerprint: true,
        primaryLastError: true,
        primaryLastOkAt: true,
        fallbackEndpoints: {
          orderBy: { position: 'asc' },
          select: { host: true, port: true, tlsFingerprint: true, lastError: true, lastOkAt: true },
        },
      },
      resolve: (node) => [
        {
          host: node.host,
          port: node.port,
          tlsFingerprint: node.tlsFingerprint,
          lastError: node.primaryLastError,
          lastOkAt: node.primaryLastOkAt,
        },
        ...node.fallbackEndpoints,
      ],
    }),
    createdAt: t.expose('createdAt', { type: 'DateTime' }),
    updatedAt: t.expose('updatedAt', { type: 'DateTime' }),
    containers: t.relation('containers', { query: { orderBy: { vmid: 'asc' } } }),
  }),
});

builder.prismaObjectField('User', 'nodes', (t) =>
  t.relation('nodes', { query: { orderBy: [{ createdAt: 'asc' }, { id: 'asc' }] } }),
);

const ClusterMemberRef = builder.objectRef<ClusterMember>('ClusterMember').implement({
  fields: (t) => ({
    name: t.exposeString('name'),
    address: t.exposeString('address', {
      nullable: true,
      description: "The member's cluster address, as Proxmox reports it.",
    }),
    online: t.exposeBoolean('online'),
  }),
});

export const ConnectionTestRef = builder.objectRef<ConnectionTestResult>('ConnectionTest').implement({
  description: 'Outcome of asking a node for /version and /cluster/status.',
  fields: (t) => ({
    ok: t.exposeBoolean('ok'),
    latencyMs: t.exposeInt('latencyMs'),
    version: t.exposeString('version', { nullable: true, description: 'Proxmox /version .version' }),
    release: t.exposeString('release', { nullable: true }),
    fingerprint: t.exposeString('fingerprint', {
      nullable: true,
      description: 'SHA-256 of the certificate the host presented.',
    }),
    clusterName: t.exposeString('clusterName', { nullable: true }),
    pveNodeNames: t.exposeStringList('pveNodeNames'),
    members: t.field({
      type: [ClusterMemberRef],
      description: "The cluster's members as /cluster/status lists them (candidates for fallback endpoints).",
      resolve: (r) => r.members,
    }),
    missingPrivileges: t.exposeStringList('missingPrivileges', {
      description:
        'Privileges pvegraph needs that the token lacks, as "Privilege@path" (e.g. "VM.Audit@/vms", "Sys.Audit@/"), ' +
        'read from /access/permissions; a grant on a parent path with propagation counts. Empty when all are there. ' +
        'Never fails the test: when /access/permissions cannot be read (e.g. an older Proxmox), nothing is reported missing. ' +
        'Also empty when ok is false, except PROXMOX_FORBIDDEN (the token authenticated but was refused), where it names what is missing.',
    }),
    errorCode: t.exposeString('errorCode', {
      nullable: true,
      description: 'A PROXMOX_* or HOST_NOT_ALLOWED code when ok is false.',
    }),
    message: t.exposeString('message', { nullable: true }),
  }),
});

const EndpointInput = builder.inputType('EndpointInput', {
  description: 'A fallback endpoint: same token and allowInsecureTls as the registration, its own TLS pin.',
  fields: (t) => ({
    host: t.string({ required: true, validate: { schema: rules.nodeHost } }),
    port: t.int({ defaultValue: 8006, validate: { schema: rules.nodePort } }),
    tlsFingerprint: t.string({ validate: { schema: rules.tlsFingerprint } }),
  }),
});

const CreateNodeInput = builder.inputType('CreateNodeInput', {
  fields: (t) => ({
    name: t.string({ required: true, validate: { schema: rules.nodeName } }),
    host: t.string({ required: true, validate: { schema: rules.nodeHost } }),
    port: t.int({ defaultValue: 8006, validate: { schema: rules.nodePort } }),
    tokenId: t.string({ required: true, validate: { schema: rules.tokenId } }),
    tokenSecret: t.string({ required: true, validate: { schema: rules.tokenSecret } }),
    sshPassword: t.string({ validate: { schema: rules.sshPassword } }),
    tlsFingerprint: t.string({ validate: { schema: rules.tlsFingerprint } }),
    allowInsecureTls: t.boolean({ defaultValue: false }),
    fallbackEndpoints: t.field({
      type: [EndpointInput],
      description: `Tried in order after host/port when an endpoint is unreachable; at most ${rules.MAX_FALLBACK_ENDPOINTS}, none equal to another or to the primary. Each one the connection test does not reach is asked for /version: a TLS or token refusal refuses the registration, an unreachable one is accepted.`,
    }),
  }),
});

const UpdateNodeInput = builder.inputType('UpdateNodeInput', {
  fields: (t) => ({
    id: t.id({ required: true }),
    name: t.string({ validate: { schema: rules.nodeName } }),
    host: t.string({ validate: { schema: rules.nodeHost } }),
    port: t.int({ validate: { schema: rules.nodePort } }),
    tokenId: t.string({ validate: { schema: rules.tokenId } }),
    tokenSecret: t.string({
      description: 'Omitted or empty: keep the stored one.',
      validate: { schema: rules.tokenSecret.or(rules.emptyString) },
    }),
    sshPassword: t.string({
      description: 'Omitted: keep; empty string: remove.',
      validate: { schema: rules.sshPassword },
    }),
    tlsFingerprint: t.string({
      description: 'null or empty: remove the pin.',
      validate: { schema: rules.tlsFingerprint.or(rules.emptyString) },
    }),
    allowInsecureTls: t.boolean(),
    fallbackEndpoints: t.field({
      type: [EndpointInput],
      description:
        'Omitted or null: keep; a list replaces all fallbacks ([] removes them). A fallback that is not already one of the stored endpoints (same host, port and pin) needs tokenSecret again.',
    }),
  }),
});

builder.queryFields((t) => ({
  nodes: t.prismaField({
    type: ['ProxmoxNode'],
    description: "The caller's nodes, oldest first.",
    resolve: (query, _root, _args, ctx) => ctx.services.nodes.list(ctx.viewer, query),
  }),
  node: t.prismaField({
    type: 'ProxmoxNode',
    nullable: true,
    description: "One of the caller's nodes; NOT_FOUND for any other id.",
    args: { id: t.arg.id({ required: true }) },
    resolve: (query, _root, args, ctx) => ctx.services.nodes.get(ctx.viewer, String(args.id), query),
  }),
  defaultNode: t.prismaField({
    type: 'ProxmoxNode',
    nullable: true,
    resolve: (query, _root, _args, ctx) => ctx.services.nodes.defaultNode(ctx.viewer, query),
  }),
}));

builder.mutationFields((t) => ({
  createNode: t.prismaField({
    type: 'ProxmoxNode',
    description:
      'Tests the connection first; nothing is stored on failure. The first node becomes the default. Rate-limited per user.',
    args: { input: t.arg({ type: CreateNodeInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      await ctx.services.rateLimiter.consume('proxmox', ctx.viewer.userId);
      return ctx.services.nodes.create(ctx.viewer, input, query);
    },
  }),
  updateNode: t.prismaField({
    type: 'ProxmoxNode',
    description: 'Re-tests the connection when host, port, token or TLS settings change.',
    args: { input: t.arg({ type: UpdateNodeInput, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      await ctx.services.rateLimiter.consume('proxmox', ctx.viewer.userId);
      return ctx.services.nodes.update(ctx.viewer, { ...input, id: String(input.id) }, query);
    },
  }),
  deleteNode: t.boolean({
    description: 'FAILED_PRECONDITION while containers are registered. Deleting the default promotes the oldest node.',
    args: { id: t.arg.id({ required: true }) },
    resolve: (_root, args, ctx) => ctx.services.nodes.delete(ctx.viewer, String(args.id)),
  }),
  setDefaultNode: t.prismaField({
    type: 'ProxmoxNode',
    args: { id: t.arg.id({ required: true }) },
    resolve: (query, _root, args, ctx) => ctx.services.nodes.setDefault(ctx.viewer, String(args.id), query),
  }),
  testNodeConnection: t.field({
    type: ConnectionTestRef,
    description: 'Never throws for Proxmox failures: they come back as ok = false with errorCode.',
    args: { id: t.arg.id({ required: true }) },
    resolve: async (_root, args, ctx) => {
      await ctx.services.rateLimiter.consume('proxmox', ctx.viewer.userId);
      return ctx.services.nodes.testConnection(ctx.viewer, String(args.id));
    },
  }),
}));
