import { ConfigError, loadConfig } from './config/config.js';
import { claimEmbeddedLock } from './db/embedded-lock.js';
import { createApp } from './http/app.js';
import { createLogger } from './logging.js';
import { openRuntime } from './runtime.js';
import { describeRedisTarget } from './redis/redis-target.js';

/** `npm start`: serve the API until SIGTERM/SIGINT. */
async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`pvegraph: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const log = createLogger(config.logLevel);
  const releaseLock = config.databaseUrl ? async () => undefined : await claimEmbeddedLock(config.dataDir);
  const runtime = await openRuntime(config, log);
  log.info(
    { database: runtime.mode, cache: config.redis ? describeRedisTarget(config.redis) : 'in-process' },
    runtime.mode === 'embedded'
      ? `embedded mode: PGlite in ${config.dataDir}, in-process cache and pub/sub (single instance)`
      : `service mode: PostgreSQL, ${config.redis ? 'Redis cache and pub/sub' : 'in-process cache and pub/sub (single instance)'}`,
  );

  // The port first: a server that cannot serve creates no admin and prints no token.
  const app = createApp({ services: runtime.services, log, config });
  let url: string;
  try {
    url = await app.listen(config.port, config.host);
  } catch (err) {
    await runtime.close();
    await releaseLock();
    throw listenFailure(err, config.host, config.port);
  }

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'shutting down');
    try {
      await app.stop();
      await runtime.close();
      await releaseLock();
      process.exit(0);
    } catch (err) {
      log.error({ err }, 'error during shutdown');
      process.exit(1);
    }
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));

  if (runtime.mode === 'embedded' && (await runtime.services.auth.countUsers()) === 0) {
    const { token } = await runtime.services.auth.createUser('admin');
    // Printed once, on stdout and not through the logger, so it never lands in log files.
    process.stdout.write(
      [
        '',
        '================================================================',
        ' First start: created user "admin". Its API token (shown once):',
        '',
        `   ${token}`,
        '',
        ' Use it as: Authorization: Bearer <token>',
        '================================================================',
        '',
      ].join('\n') + '\n',
    );
  }

  log.info(
    { url: `${url}/graphql` },
    config.graphiql ? `pvegraph listening: GraphiQL at ${url}/graphql` : `pvegraph listening at ${url}/graphql`,
  );
}

/** Why the port could not be bound, in one line for the operator (no stack: nothing is broken). */
function listenFailure(err: unknown, host: string, port: number): Error {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'EADDRINUSE') return new Error(`${host}:${port} is in use by another process (set PORT or HOST)`);
  if (code === 'EACCES') return new Error(`not allowed to listen on ${host}:${port} (set PORT or HOST)`);
  if (code === 'EADDRNOTAVAIL') return new Error(`${host} is not an address of this machine (set HOST)`);
  return err instanceof Error ? err : new Error(String(err));
}

main().catch((err: unknown) => {
  process.stderr.write(`pvegraph: failed to start: ${(err as Error).message}\n`);
  process.exit(1);
});
