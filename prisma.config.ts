import path from 'node:path';
import { defineConfig } from 'prisma/config';

// The native schema engine cannot be fetched offline; generate works with a stub that
// refuses loudly (see prisma/schema-engine-stub.sh and ../shared/notes/toolchain.md).
process.env.PRISMA_SCHEMA_ENGINE_BINARY ??= path.resolve('prisma/schema-engine-stub.sh');

export default defineConfig({
  schema: 'prisma/schema.prisma',
  migrations: { path: 'prisma/migrations' },
  // Read directly: `env('DATABASE_URL')` would make `generate` fail when it is unset.
  datasource: { url: process.env.DATABASE_URL ?? '' },
});
