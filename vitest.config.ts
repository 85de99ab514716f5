import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: {
    // Node loads graphql's CommonJS build (it ignores "module"); Vite would pick index.mjs for
    // our code while CommonJS dependencies (Pothos) get the other copy: "Cannot use
    // GraphQLSchema from another module or realm". Make Vite load the one Node loads.
    alias: [{ find: /^graphql$/, replacement: 'graphql/index.js' }],
  },
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/support/global-setup.ts'],
    // Test files share one PostgreSQL and Redis server but each gets its own database
    // (cloned from a migrated template) and Redis key prefix; two files at once fits 2 cores.
    pool: 'forks',
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    teardownTimeout: 30_000,
  },
});
