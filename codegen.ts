import type { CodegenConfig } from '@graphql-codegen/cli';

/**
 * Typed documents for the tests: every `graphql(\`…\`)` in test/ gets its result and
 * variable types from schema/schema.graphql (printed from the code by `npm run schema:print`).
 */
const config: CodegenConfig = {
  schema: 'schema/schema.graphql',
  documents: ['test/**/*.ts', '!test/gql/**'],
  ignoreNoDocuments: true,
  generates: {
    'test/gql/': {
      preset: 'client',
      config: {
        emitLegacyCommonJSImports: false,
        useTypeImports: true,
        scalars: { DateTime: 'string' },
        enumsAsTypes: true,
      },
      presetConfig: { fragmentMasking: false },
    },
  },
};

export default config;
