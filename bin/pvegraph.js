#!/usr/bin/env node
// `npx pvegraph …`: runs the CLI compiled by `npm install` (`npm run build`) into dist/.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

if (!existsSync(fileURLToPath(import.meta.resolve('../dist/cli/main.js')))) {
  process.stderr.write('pvegraph: dist/ is missing: run `npm run build` (npm install does it) first\n');
  process.exit(1);
}
if (process.argv[2] === 'vmid') {
  // Talks to a running server only: loads no database client, so each call starts fast.
  const { runVmidCli } = await import('../dist/cli/vmid.js');
  process.exit(await runVmidCli(process.argv.slice(3)));
}
await import('../dist/cli/main.js');
