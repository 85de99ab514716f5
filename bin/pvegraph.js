#!/usr/bin/env node
// `npx pvegraph …`: runs the TypeScript CLI through tsx's loader (no build step).
import { register } from 'tsx/esm/api';

register();
if (process.argv[2] === 'vmid') {
  // Talks to a running server only: loads no database client, so each call starts fast.
  const { runVmidCli } = await import('../src/cli/vmid.ts');
  process.exit(await runVmidCli(process.argv.slice(3)));
}
await import('../src/cli/main.ts');
