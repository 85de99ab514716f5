import { builder } from '../graphql/builder.js';
import * as rules from './node-validation.js';

builder.prismaObject('Container', {
  description: 'A container a client created on one of its nodes and registered here.',
  fields: (t) => ({
    id: t.exposeID('id'),
    vmid: t.exposeInt('vmid'),
    hostname: t.exposeString('hostname', { nullable: true }),
    node: t.relation('node'),
    createdAt: t.expose('createdAt', { type: 'DateTime' }),
  }),
});

const RegisterContainerInput = builder.inputType('RegisterContainerInput', {
  fields: (t) => ({
    nodeId: t.id({ required: true }),
    vmid: t.int({ required: true, validate: { schema: rules.vmid } }),
    hostname: t.string({ validate: { schema: rules.containerHostname } }),
  }),
});

builder.mutationFields((t) => ({
  registerContainer: t.prismaField({
    type: 'Container',
    description:
      "Records a container; CONFLICT when the VMID is registered on the node already. Uses up a reservation of the VMID and invalidates the node's VMID cache.",
    args: { input: t.arg({ type: RegisterContainerInput, required: true }) },
    resolve: (query, _root, { input }, ctx) =>
      ctx.services.containers.register(ctx.viewer, { ...input, nodeId: String(input.nodeId) }, query),
  }),
  unregisterContainer: t.boolean({
    description: "Forgets a container. Invalidates the node's VMID cache.",
    args: { id: t.arg.id({ required: true }) },
    resolve: (_root, args, ctx) => ctx.services.containers.unregister(ctx.viewer, String(args.id)),
  }),
}));
