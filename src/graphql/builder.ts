import SchemaBuilder from '@pothos/core';
import PrismaPlugin from '@pothos/plugin-prisma';
import ZodPlugin from '@pothos/plugin-zod';
import { GraphQLError, Kind } from 'graphql';
import type { ZodError } from 'zod';
import type PrismaTypes from '../db/generated/pothos-types.js';
import { getDatamodel } from '../db/generated/pothos-types.js';
import { BadUserInputError } from '../errors.js';
import type { GraphQLContext } from './context.js';

/**
 * The one Pothos builder. It only configures: plugins, context, scalars and empty root
 * types. Each capability adds its own types and root fields next to each other.
 */
export const builder = new SchemaBuilder<{
  Context: GraphQLContext;
  PrismaTypes: PrismaTypes;
  Scalars: { DateTime: { Input: Date; Output: Date | string } };
  DefaultFieldNullability: false;
}>({
  plugins: [PrismaPlugin, ZodPlugin],
  defaultFieldNullability: false,
  prisma: {
    // Resolved per request: one schema serves every server instance and test database.
    client: (ctx) => ctx.services.db.prisma,
    dmmf: getDatamodel(),
    exposeDescriptions: false,
    filterConnectionTotalCount: true,
    onUnusedQuery: null,
  },
  zod: {
    validationError: (error) => zodToUserInputError(error),
  },
});

/** One BAD_USER_INPUT error naming every failing field (`input.port: must be ≤ 65535`). */
export function zodToUserInputError(error: ZodError): BadUserInputError {
  const fields: Record<string, string> = {};
  for (const issue of error.issues) {
    const key = issue.path.map(String).join('.') || '_';
    fields[key] ??= issue.message;
  }
  return BadUserInputError.forFields(fields);
}

builder.scalarType('DateTime', {
  description: 'An instant, as an ISO-8601 string in UTC.',
  serialize: (value) => (value instanceof Date ? value : new Date(value)).toISOString(),
  parseValue: (value) => parseDateTime(value),
  parseLiteral: (ast) => {
    if (ast.kind !== Kind.STRING) throw new GraphQLError('DateTime must be a string.');
    return parseDateTime(ast.value);
  },
});

function parseDateTime(value: unknown): Date {
  const date = typeof value === 'string' ? new Date(value) : new Date(NaN);
  if (Number.isNaN(date.getTime())) throw new GraphQLError('DateTime must be an ISO-8601 string.');
  return date;
}

builder.queryType({});
builder.mutationType({});
builder.subscriptionType({});
