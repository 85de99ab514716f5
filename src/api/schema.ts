import { assertValidSchema } from 'graphql';
import { builder } from '../graphql/builder.js';
// Each capability registers its types and root fields on import.
import '../users/user.graphql.js';
import '../nodes/node.graphql.js';
import '../nodes/container.graphql.js';
import '../vmids/vmid.graphql.js';

export const schema = builder.toSchema();
// Fail at start-up, not on the first request.
assertValidSchema(schema);
