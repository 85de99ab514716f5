import { parseArgs } from 'node:util';
import { AuthService } from '../auth/auth-service.js';
import { ConfigError, loadConfig } from '../config/config.js';
import { openEmbedded, openPostgres } from '../db/database.js';
import { assertNoEmbeddedServer } from '../db/embedded-lock.js';
import { migrate } from '../db/migrate.js';
import { DomainError } from '../errors.js';

const USAGE = `usage: pvegraph <command>

  migrate                         apply prisma/migrations to the database
  user create --name NAME         create a user; prints its API token (last line)
  token create --user NAME        print a new API token for an existing user
  token list --user NAME          list a user's tokens (prefix, created, last used, revoked)
  token revoke ID|PREFIX          revoke a token (takes effect within TOKEN_CACHE_TTL_MS)
  vmid reserve|consume|release    VMIDs for scripts, against a running server (pvegraph vmid --help)

Uses DATABASE_URL, or the embedded database in PVEGRAPH_DATA_DIR when it is unset (vmid: the
server's GraphQL API at --url, with PVEGRAPH_TOKEN).`;

async function main(argv: string[]): Promise<number> {
  // bin/pvegraph.js sends `vmid` straight to src/cli/vmid.ts; this is for `tsx src/cli/main.ts vmid …`.
  if (argv[0] === 'vmid') return (await import('./vmid.js')).runVmidCli(argv.slice(1));
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { name: { type: 'string' }, user: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  const [command, sub, arg] = positionals;
  if (values.help || !command) {
    process.stdout.write(USAGE + '\n');
    return command || values.help ? 0 : 2;
  }

  // These commands touch no secrets and no cache: the database is all they need, so they run
  // where the server's ENCRYPTION_KEY and Redis are not (a deploy step, a CI job).
  const config = loadConfig(process.env, { requireEncryptionKey: false });
  if (!config.databaseUrl) await assertNoEmbeddedServer(config.dataDir);
  const db = config.databaseUrl
    ? await openPostgres(config.databaseUrl, { poolMax: 2 })
    : await openEmbedded(config.dataDir);
  try {
    const report = await db.withSession((session) => migrate(session));
    const auth = new AuthService(db.prisma, { cacheTtlMs: 0 });
    switch (`${command} ${sub ?? ''}`.trim()) {
      case 'migrate':
        for (const name of report.applied) process.stdout.write(`applied ${name}\n`);
        process.stdout.write(
          `database is up to date (${report.applied.length + report.alreadyApplied.length} migrations)\n`,
        );
        return 0;
      case 'user create': {
        const name = required(values.name, '--name');
        const { token } = await auth.createUser(name);
        process.stdout.write(`created user "${name}". API token (shown once):\n${token}\n`);
        return 0;
      }
      case 'token create': {
        const name = required(values.user, '--user');
        const { token } = await auth.createToken(name);
        process.stdout.write(`new API token for "${name}" (shown once):\n${token}\n`);
        return 0;
      }
      case 'token list': {
        const rows = await auth.listTokens(required(values.user, '--user'));
        for (const t of rows) {
          const state = t.revokedAt ? `revoked ${t.revokedAt.toISOString()}` : 'active';
          process.stdout.write(
            `${t.id}  ${t.prefix}…  created ${t.createdAt.toISOString()}  last used ${t.lastUsedAt?.toISOString() ?? 'never'}  ${state}\n`,
          );
        }
        return 0;
      }
      case 'token revoke': {
        const count = await auth.revokeToken(required(arg, 'ID|PREFIX'));
        if (count === 0) throw new CliError('no active token matches');
        process.stdout.write(`revoked ${count} token(s)\n`);
        return 0;
      }
      default:
        process.stderr.write(`pvegraph: unknown command "${positionals.join(' ')}"\n${USAGE}\n`);
        return 2;
    }
  } finally {
    await db.close();
  }
}

class CliError extends Error {}

function required(value: string | undefined, flag: string): string {
  if (!value || !value.trim()) throw new CliError(`${flag} is required`);
  return value.trim();
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    const known = err instanceof ConfigError || err instanceof CliError || err instanceof DomainError;
    process.stderr.write(`pvegraph: ${known ? err.message : `failed: ${(err as Error).message}`}\n`);
    process.exit(1);
  },
);
