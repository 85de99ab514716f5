/**
 * Prints the schema the code builds to schema/schema.graphql (sorted, so diffs stay small).
 * `npm run schema:print`; test/schema.test.ts fails when the checked-in file is stale.
 */
import { writeFileSync } from 'node:fs';
import { printSortedSchema, SCHEMA_FILE } from '../src/api/print.js';

writeFileSync(SCHEMA_FILE, printSortedSchema());
process.stdout.write(`wrote ${SCHEMA_FILE}\n`);
