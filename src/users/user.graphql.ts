import { builder } from '../graphql/builder.js';

export const UserRef = builder.prismaObject('User', {
  description: 'A person or program holding API tokens; owns Proxmox nodes.',
  fields: (t) => ({
    id: t.exposeID('id'),
    name: t.exposeString('name'),
  }),
});

builder.queryField('me', (t) =>
  t.prismaField({
    type: 'User',
    description: 'The user the API token belongs to.',
    resolve: (query, _root, _args, ctx) => ctx.services.users.byIdForQuery(ctx.viewer, query),
  }),
);
