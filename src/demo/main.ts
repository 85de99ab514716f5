import { ConfigError, loadConfig } from '../config/config.js';
import { createLogger } from '../logging.js';
import { DEMO_SUBSCRIPTION, startDemo } from './demo.js';

/** `npm run demo`: the embedded server and a simulated cluster, until Ctrl-C. */
async function main(): Promise<void> {
  let config;
  try {
    // The server's own lines would bury what a newcomer needs: warnings only, unless asked.
    config = loadConfig({ LOG_LEVEL: 'warn', ...process.env });
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`pvegraph demo: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const log = createLogger(config.logLevel);
  const demo = await startDemo(config, log);
  const graphiql = `${demo.url}/graphql?query=${encodeURIComponent(DEMO_SUBSCRIPTION)}`;
  const sse = `${demo.url}/graphql?query=${encodeURIComponent(DEMO_SUBSCRIPTION.replace(/\s+/g, ' '))}`;
  process.stdout.write(
    [
      '',
      '================================================================',
      ' pvegraph demo: an embedded server and a simulated Proxmox VE cluster',
      ` "${demo.simulator.clusterName}" (${demo.simulator.nodeNames.join(', ')}), where a guest is`,
      ' created or destroyed every few seconds. It is registered for the',
      ' user "admin", whose API token is:',
      '',
      `   ${demo.token}`,
      '',
      ' 1. Open GraphiQL with a live subscription ready:',
      '',
      `   ${graphiql}`,
      '',
      ' 2. Paste into its Headers tab:',
      '',
      `   { "Authorization": "Bearer ${demo.token}" }`,
      '',
      ' 3. Press the run button: VMID events arrive within seconds.',
      '',
      ' Or in a shell (Server-Sent Events):',
      '',
      `   curl -N -H 'Accept: text/event-stream' -H 'Authorization: Bearer ${demo.token}' \\`,
      `     '${sse}'`,
      '',
      ' Data: a fresh database in the data dir\'s "demo" folder, wiped at',
      ' the next demo. Ctrl-C stops the demo.',
      '================================================================',
      '',
    ].join('\n') + '\n',
  );

  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stdout.write(`\n${signal}: stopping the demo\n`);
    demo.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

main().catch((err: unknown) => {
  process.stderr.write(`pvegraph demo: failed to start: ${(err as Error).message}\n`);
  process.exit(1);
});
