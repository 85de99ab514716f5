import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';

/**
 * `npx pvegraph vmid reserve|consume|release`: VMIDs for scripts, Terraform and Ansible,
 * through a running server's public GraphQL API. Only Node's own modules are loaded here (no
 * database, no Prisma, no GraphQL library): one process per call has to start fast.
 */

/** What a script branches on. Documented in USAGE and docs/automation.md. */
export const EXIT = {
  OK: 0,
  OTHER: 1,
  USAGE: 2,
  CONFLICT: 3,
  PROXMOX: 4,
  AUTH: 5,
  NOT_FOUND: 6,
  NOT_RESERVED: 7,
  RETRY: 8,
} as const;

export const VMID_USAGE = `usage: pvegraph vmid <command> [options]

  reserve --url URL --node NODE [--ttl S] [--vmid N] [--min N] [--key K]
      reserve a VMID (the lowest free one >= --min, or --vmid); prints it as the last line.
      --key K: a repeated reserve with the same key answers the same VMID while its
      reservation lives, and while the VMID is a guest once it was consumed
  reserve --terraform
      Terraform's external data source: reads one JSON object of strings on stdin (url, node,
      optional ttl, min, key, token_file), writes one (vmid, node_id, expires_at)
  consume --url URL --node NODE --vmid N [--hostname H]
      register the container created with the VMID (its reservation is used up, the VMID
      stays taken); prints the container's id
  release --url URL --node NODE --vmid N
      end the reservation early

  --url URL          the pvegraph server: its base URL or its /graphql URL (or PVEGRAPH_URL)
  --node NODE        one of your nodes: its name, or its id (a UUID)
  --token-file F     read the API token from file F (default: the PVEGRAPH_TOKEN variable)
  --ttl S            how long the reservation holds, 1..86400 seconds (default 600)
  --timeout S        give up waiting for the server after S seconds (default 60)

exit status (errors: one line on stderr, "pvegraph: CODE: message", CODE from the server):
  0  done
  1  anything else (INTERNAL_SERVER_ERROR, FAILED_PRECONDITION, an unexpected answer)
  2  usage: a missing or bad option or value (BAD_USER_INPUT)
  3  CONFLICT: the VMID is taken or reserved, or none is free in the range
  4  PROXMOX_*: Proxmox unreachable, timed out, refused the node's token, TLS, ...
  5  UNAUTHENTICATED: no API token, or the server refused it
  6  NOT_FOUND: no such node (or not yours)
  7  release: there was no reservation of the VMID to end
  8  try again later: the server unreachable or not answering in time, RATE_LIMITED,
     SERVICE_UNAVAILABLE`;

/** An error that ends the command: one stderr line with its code, and an exit status. */
export class VmidCliError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly exitCode: number = exitCodeFor(code),
  ) {
    super(message);
  }
}

/** The exit status for an error code of the server (or of the CLI itself). */
export function exitCodeFor(code: string): number {
  if (code === 'CONFLICT') return EXIT.CONFLICT;
  if (code.startsWith('PROXMOX_')) return EXIT.PROXMOX;
  if (code === 'UNAUTHENTICATED') return EXIT.AUTH;
  if (code === 'BAD_USER_INPUT') return EXIT.USAGE;
  if (code === 'NOT_FOUND') return EXIT.NOT_FOUND;
  if (code === 'NOT_RESERVED') return EXIT.NOT_RESERVED;
  if (['UNREACHABLE', 'TIMEOUT', 'RATE_LIMITED', 'SERVICE_UNAVAILABLE'].includes(code)) return EXIT.RETRY;
  return EXIT.OTHER;
}

interface Settings {
  url: string;
  node: string;
  token: string;
  timeoutMs: number;
}

interface ReserveRequest {
  ttl?: number;
  vmid?: number;
  min?: number;
  key?: string;
}

interface Reservation {
  nodeId: string;
  vmid: number;
  expiresAt: string;
  consumed: boolean;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DEFAULT_TIMEOUT_S = 60;

/** Runs `pvegraph vmid …` (argv after "vmid"); answers the exit status. */
export async function runVmidCli(
  argv: string[],
  io: Io = { stdin: process.stdin, stdout: process.stdout, stderr: process.stderr, env: process.env },
): Promise<number> {
  try {
    return await run(argv, io);
  } catch (err) {
    const known =
      err instanceof VmidCliError ? err : new VmidCliError('ERROR', (err as Error).message ?? String(err), EXIT.OTHER);
    io.stderr.write(`pvegraph: ${known.code}: ${oneLine(known.message)}\n`);
    return known.exitCode;
  }
}

interface Io {
  stdin: NodeJS.ReadableStream;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

async function run(argv: string[], io: Io): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: 'string' },
        node: { type: 'string' },
        'token-file': { type: 'string' },
        ttl: { type: 'string' },
        vmid: { type: 'string' },
        min: { type: 'string' },
        key: { type: 'string' },
        hostname: { type: 'string' },
        timeout: { type: 'string' },
        terraform: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw usage((err as Error).message);
  }
  const { positionals, values } = parsed;
  const [command, ...extra] = positionals;
  if (values.help) {
    io.stdout.write(VMID_USAGE + '\n');
    return EXIT.OK;
  }
  if (!command) throw usage('a command is required: reserve, consume or release (see pvegraph vmid --help)');
  if (extra.length > 0) throw usage(`unexpected argument "${extra[0]}"`);
  const allowed: Record<string, readonly string[]> = {
    reserve: ['url', 'node', 'token-file', 'ttl', 'vmid', 'min', 'key', 'timeout', 'terraform'],
    consume: ['url', 'node', 'token-file', 'vmid', 'hostname', 'timeout'],
    release: ['url', 'node', 'token-file', 'vmid', 'timeout'],
  };
  const options = allowed[command];
  if (!options) throw usage(`unknown command "${command}" (reserve, consume or release)`);
  for (const name of Object.keys(values)) {
    if (!options.includes(name)) throw usage(`--${name} does not apply to ${command}`);
  }

  if (values.terraform) {
    const others = Object.keys(values).filter((k) => k !== 'terraform');
    if (others.length > 0) throw usage(`--terraform reads its settings from stdin: drop --${others[0]}`);
    return terraform(io);
  }

  const settings: Settings = {
    url: graphqlUrl(values.url ?? io.env.PVEGRAPH_URL),
    node: required(values.node, '--node'),
    token: await token(values['token-file'], io.env),
    timeoutMs: seconds(values.timeout, '--timeout', DEFAULT_TIMEOUT_S) * 1000,
  };
  switch (command) {
    case 'reserve': {
      const request: ReserveRequest = {};
      if (values.ttl !== undefined) request.ttl = integer(values.ttl, '--ttl');
      if (values.vmid !== undefined) request.vmid = integer(values.vmid, '--vmid');
      if (values.min !== undefined) request.min = integer(values.min, '--min');
      if (values.key !== undefined) request.key = values.key;
      const reservation = await reserve(settings, request);
      if (reservation.consumed) {
        io.stderr.write(
          `pvegraph: VMID ${reservation.vmid} of this key is a guest already (its reservation was consumed): nothing reserved\n`,
        );
      }
      io.stdout.write(`${reservation.vmid}\n`);
      return EXIT.OK;
    }
    case 'consume': {
      const vmid = integer(required(values.vmid, '--vmid'), '--vmid');
      const nodeId = await resolveNode(settings);
      const data = await gql<{ registerContainer: { id: string } }>(
        settings,
        'mutation($input: RegisterContainerInput!) { registerContainer(input: $input) { id } }',
        { input: { nodeId, vmid, ...(values.hostname !== undefined ? { hostname: values.hostname } : {}) } },
      );
      io.stdout.write(`${data.registerContainer.id}\n`);
      return EXIT.OK;
    }
    default: {
      const vmid = integer(required(values.vmid, '--vmid'), '--vmid');
      const nodeId = await resolveNode(settings);
      const data = await gql<{ releaseVmid: boolean }>(
        settings,
        'mutation($n: ID!, $v: Int!) { releaseVmid(nodeId: $n, vmid: $v) }',
        {
          n: nodeId,
          v: vmid,
        },
      );
      if (!data.releaseVmid)
        throw new VmidCliError(
          'NOT_RESERVED',
          `no reservation of VMID ${vmid} to release (none, lapsed, consumed, or not yours)`,
        );
      io.stdout.write(`released ${vmid}\n`);
      return EXIT.OK;
    }
  }
}

async function reserve(settings: Settings, request: ReserveRequest): Promise<Reservation> {
  const nodeId = await resolveNode(settings);
  const data = await gql<{ reserveVmid: Reservation }>(
    settings,
    `mutation($n: ID!, $vmid: Int, $ttl: Int, $min: Int, $key: String) {
      reserveVmid(nodeId: $n, vmid: $vmid, ttlSeconds: $ttl, min: $min, key: $key) { nodeId vmid expiresAt consumed }
    }`,
    // Omitted variables keep the server's defaults (ttlSeconds 600, min 100).
    { n: nodeId, vmid: request.vmid, ttl: request.ttl, min: request.min, key: request.key },
  );
  return data.reserveVmid;
}

// ------------------------------------------------------------------ Terraform

/** The keys Terraform's `query` may hold (all values are strings, as that protocol sends them). */
const TERRAFORM_KEYS = ['url', 'node', 'ttl', 'min', 'key', 'token_file'] as const;

/**
 * Terraform's `external` data source protocol: one JSON object of strings on stdin, one on
 * stdout (nothing else there), errors on stderr with a non-zero exit. The token comes from
 * PVEGRAPH_TOKEN in Terraform's environment or from the file `token_file` names: never from
 * the query, which Terraform keeps in its state.
 */
async function terraform(io: Io): Promise<number> {
  let text = '';
  for await (const chunk of io.stdin) text += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
  let query: unknown;
  try {
    query = JSON.parse(text);
  } catch {
    throw usage("stdin must hold one JSON object (the external data source's query)");
  }
  if (typeof query !== 'object' || query === null || Array.isArray(query))
    throw usage('stdin must hold one JSON object');
  const fields = query as Record<string, unknown>;
  for (const [name, value] of Object.entries(fields)) {
    if (name === 'token')
      throw usage(
        'do not put the token in the query (Terraform stores it in its state): set PVEGRAPH_TOKEN or token_file',
      );
    if (!(TERRAFORM_KEYS as readonly string[]).includes(name))
      throw usage(`unknown query key "${name}" (${TERRAFORM_KEYS.join(', ')})`);
    if (typeof value !== 'string' && value !== null) throw usage(`query key "${name}" must be a string`);
  }
  /** Terraform passes every value as a string; an empty one counts as not set. */
  const field = (name: (typeof TERRAFORM_KEYS)[number]) => {
    const value = fields[name];
    return typeof value === 'string' && value !== '' ? value : undefined;
  };
  const settings: Settings = {
    url: graphqlUrl(field('url') ?? io.env.PVEGRAPH_URL),
    node: required(field('node'), 'node'),
    token: await token(field('token_file'), io.env),
    timeoutMs: DEFAULT_TIMEOUT_S * 1000,
  };
  const request: ReserveRequest = {};
  const ttl = field('ttl');
  const min = field('min');
  const key = field('key');
  if (ttl !== undefined) request.ttl = integer(ttl, 'ttl');
  if (min !== undefined) request.min = integer(min, 'min');
  if (key !== undefined) request.key = key;
  const reservation = await reserve(settings, request);
  io.stdout.write(
    JSON.stringify({ vmid: String(reservation.vmid), node_id: reservation.nodeId, expires_at: reservation.expiresAt }) +
      '\n',
  );
  return EXIT.OK;
}

// ------------------------------------------------------------------ the server

/** Names resolve through `nodes { id name }`; an id (a UUID) is sent as it is. */
async function resolveNode(settings: Settings): Promise<string> {
  if (UUID.test(settings.node)) return settings.node;
  const data = await gql<{ nodes: Array<{ id: string; name: string }> }>(settings, '{ nodes { id name } }', {});
  const found = data.nodes.find((n) => n.name === settings.node);
  if (!found)
    throw new VmidCliError(
      'NOT_FOUND',
      `no node named "${settings.node}" (your nodes: ${data.nodes.map((n) => n.name).join(', ') || 'none'})`,
    );
  return found.id;
}

interface GraphQLBody<T> {
  data?: T | null;
  errors?: Array<{ message?: string; extensions?: { code?: string } }>;
}

/** POSTs one operation; the first GraphQL error becomes a VmidCliError with its code. */
async function gql<T>(settings: Settings, query: string, variables: Record<string, unknown>): Promise<T> {
  let res: Response;
  try {
    res = await fetch(settings.url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/graphql-response+json, application/json',
        authorization: `Bearer ${settings.token}`,
      },
      body: JSON.stringify({ query, variables }),
      signal: AbortSignal.timeout(settings.timeoutMs),
    });
  } catch (err) {
    throw transportError(settings, err);
  }
  let body: GraphQLBody<T>;
  try {
    body = (await res.json()) as GraphQLBody<T>;
  } catch (err) {
    if ((err as Error).name === 'TimeoutError' || (err as Error).name === 'AbortError')
      throw transportError(settings, err);
    const transient = res.status === 502 || res.status === 503 || res.status === 504;
    throw new VmidCliError(
      `HTTP_${res.status}`,
      `${settings.url} answered HTTP ${res.status} without a GraphQL response`,
      transient ? EXIT.RETRY : EXIT.OTHER,
    );
  }
  const first = body.errors?.[0];
  if (first) throw new VmidCliError(first.extensions?.code ?? 'ERROR', first.message ?? 'the server reported an error');
  if (!body.data)
    throw new VmidCliError(`HTTP_${res.status}`, `${settings.url} answered HTTP ${res.status} without data`);
  return body.data;
}

function transportError(settings: Settings, err: unknown): VmidCliError {
  const e = err as Error & { cause?: { code?: string; message?: string } };
  if (e.name === 'TimeoutError' || e.name === 'AbortError') {
    return new VmidCliError('TIMEOUT', `no answer from ${settings.url} within ${settings.timeoutMs / 1000} s`);
  }
  const cause = e.cause?.code ?? e.cause?.message ?? e.message;
  return new VmidCliError('UNREACHABLE', `cannot reach ${settings.url}: ${cause}`);
}

// ------------------------------------------------------------------ settings

function usage(message: string): VmidCliError {
  return new VmidCliError('BAD_USER_INPUT', message, EXIT.USAGE);
}

function required(value: string | undefined, name: string): string {
  if (value === undefined || value.trim() === '') throw usage(`${name} is required`);
  return value.trim();
}

function integer(value: string, name: string): number {
  if (!/^\s*\d{1,10}\s*$/.test(value)) throw usage(`${name} must be a whole number (got "${value}")`);
  return Number(value);
}

function seconds(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  const n = integer(value, name);
  if (n < 1) throw usage(`${name} must be at least 1`);
  return n;
}

/** The server's base URL or its /graphql URL → the /graphql URL. */
function graphqlUrl(value: string | undefined): string {
  const given = required(value, '--url (or PVEGRAPH_URL)');
  let url: URL;
  try {
    url = new URL(given);
  } catch {
    throw usage(`--url must be a URL such as https://pvegraph.example.com (got "${given}")`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw usage(`--url must be http(s) (got "${given}")`);
  const path = url.pathname.replace(/\/+$/, '');
  url.pathname = path.endsWith('/graphql') ? path : `${path}/graphql`;
  return url.toString();
}

/** --token-file F (or token_file), else PVEGRAPH_TOKEN. */
async function token(file: string | undefined, env: NodeJS.ProcessEnv): Promise<string> {
  if (file !== undefined) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      throw usage(
        `cannot read the token file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      );
    }
    const value = text.trim();
    if (!value) throw new VmidCliError('UNAUTHENTICATED', `the token file ${file} is empty`);
    return value;
  }
  const value = env.PVEGRAPH_TOKEN?.trim();
  if (!value) throw new VmidCliError('UNAUTHENTICATED', 'no API token: set PVEGRAPH_TOKEN or pass --token-file');
  return value;
}

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}
