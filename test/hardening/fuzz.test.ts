import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../support/test-server.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';

/**
 * Property-based inputs at every mutation: whatever a client sends as variables, the answer
 * is a well-formed GraphQL response whose errors all carry a code a client can act on (never
 * INTERNAL_SERVER_ERROR), no secret sent is echoed back, and the database holds nothing
 * half-written or invalid afterwards. The simulator plays Proxmox, so "mostly valid" inputs
 * (a valid base with one field mutated or dropped) get past validation and sometimes succeed.
 */

const schemaSdl = readFileSync(new URL('../../schema/schema.graphql', import.meta.url), 'utf8');
const mutationBlock = /\btype Mutation\s*\{([\s\S]*?)\n\}/.exec(schemaSdl)?.[1] ?? '';
/** Names of the mutations in the printed schema (field names at the block's first indent). */
const schemaMutations = [...mutationBlock.matchAll(/^ {2}(\w+)\s*[(:]/gm)].map((m) => m[1]!);
const inSchema = (name: string) => schemaMutations.includes(name);

const KNOWN_CODES = new Set([
  'UNAUTHENTICATED',
  'BAD_USER_INPUT',
  'NOT_FOUND',
  'CONFLICT',
  'FAILED_PRECONDITION',
  'HOST_NOT_ALLOWED',
  'RATE_LIMITED',
  'GRAPHQL_VALIDATION_FAILED',
  'GRAPHQL_PARSE_FAILED',
  'BAD_REQUEST',
]);
const isKnownCode = (code: unknown) =>
  typeof code === 'string' && (KNOWN_CODES.has(code) || /^PROXMOX_[A-Z_]+$/.test(code));

const NUM_RUNS = Number(process.env.FUZZ_NUM_RUNS ?? 80);

// ------------------------------------------------------------------------------ arbitraries

const HUGE = [
  'a'.repeat(100_000),
  '😀'.repeat(25_000),
  `${'x'.repeat(99_990)}\u0000\u0001`,
  ' '.repeat(100_000),
  `${'ab:'.repeat(33_000)}`,
];

const NASTY = [
  '',
  ' ',
  '\u0000',
  'a\u0000b',
  '\t\n\r',
  '\u007f',
  '\u202e',
  '\ufeff',
  '\ud800',
  '\udfff',
  'null',
  'undefined',
  'NaN',
  '-1',
  '0',
  '1e309',
  "'; DROP TABLE users; --",
  "' OR '1'='1",
  '" OR ""="',
  '\\',
  '%00',
  '%',
  '_',
  '$1',
  '{"a":1}',
  '[]',
  '{}',
  '__proto__',
  'constructor',
  '${jndi:ldap://x}',
  '{{7*7}}',
  '../../etc/passwd',
  '<script>alert(1)</script>',
  'enc:v1:aaaa:bbbb:cccc:dddd',
  '00000000-0000-0000-0000-000000000000',
  'root@pam!x',
  '127.0.0.1',
  'localhost',
  '::1',
  '[::1]',
  '169.254.169.254',
  'https://pve.example.com:8006/',
  'AA:'.repeat(31) + 'AA',
];

const controlChars = fc.string({
  unit: fc.integer({ min: 0, max: 0x1f }).map((c) => String.fromCharCode(c)),
  maxLength: 20,
});

/** Strings a careless server chokes on. */
const nastyString: fc.Arbitrary<string> = fc.oneof(
  { weight: 3, arbitrary: fc.string({ maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 2, arbitrary: controlChars },
  { weight: 3, arbitrary: fc.constantFrom(...NASTY) },
  { weight: 1, arbitrary: fc.constantFrom(...HUGE) },
  { weight: 1, arbitrary: fc.json({ maxDepth: 2 }) },
);

/** JSON numbers (NaN and ±Infinity cannot be sent in JSON). */
const anyNumber: fc.Arbitrary<number> = fc.oneof(
  fc.integer(),
  fc.constantFrom(
    -1,
    0,
    -0,
    1,
    99,
    100,
    65535,
    65536,
    2 ** 31 - 1,
    2 ** 31,
    -(2 ** 31) - 1,
    999_999_999,
    1_000_000_000,
    2 ** 53,
    Number.MAX_VALUE,
    0.5,
    1e-9,
    -1.5,
  ),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
);

/** Any JSON value: wrong types, arrays instead of objects, nulls. */
const anyJson: fc.Arbitrary<unknown> = fc.oneof(
  fc.jsonValue({ maxDepth: 2 }),
  fc.constant(null),
  fc.constant([]),
  fc.constant({}),
);

type Scalar = 'String' | 'Int' | 'Boolean' | 'NodeId' | 'ContainerId';
type InputShape = Record<string, Scalar>;

interface Ctx {
  /** Node ids of the fuzzing user (refreshed before each mutation's run). */
  nodeIds: string[];
  containerIds: string[];
  /** Ids of another user's node and container: must answer NOT_FOUND. */
  foreignNodeId: string;
  foreignContainerId: string;
  sim: Simulator;
}

const pick = <T>(pool: () => T[], fallback: T) =>
  fc.nat().map((i) => {
    const p = pool();
    return p.length ? p[i % p.length]! : fallback;
  });

function idArbitrary(ctx: Ctx, kind: 'NodeId' | 'ContainerId'): fc.Arbitrary<unknown> {
  const own =
    kind === 'NodeId'
      ? pick(() => ctx.nodeIds, ctx.foreignNodeId)
      : pick(() => ctx.containerIds, ctx.foreignContainerId);
  const foreign = fc.constant(kind === 'NodeId' ? ctx.foreignNodeId : ctx.foreignContainerId);
  const wrongKind =
    kind === 'NodeId'
      ? pick(() => ctx.containerIds, ctx.foreignContainerId)
      : pick(() => ctx.nodeIds, ctx.foreignNodeId);
  return fc.oneof(
    { weight: 4, arbitrary: own },
    { weight: 1, arbitrary: foreign },
    { weight: 1, arbitrary: wrongKind },
    { weight: 1, arbitrary: fc.uuid() },
    { weight: 1, arbitrary: fc.uuid().map((u) => u.toUpperCase()) },
    { weight: 1, arbitrary: own.map((u) => ` ${u} `) },
    { weight: 2, arbitrary: nastyString },
    { weight: 1, arbitrary: anyNumber },
  );
}

/** A value for a field of that type: usually plausible, often of the wrong type. */
function valueFor(ctx: Ctx, type: Scalar): fc.Arbitrary<unknown> {
  const typed: fc.Arbitrary<unknown> =
    type === 'String'
      ? nastyString
      : type === 'Int'
        ? anyNumber
        : type === 'Boolean'
          ? fc.boolean()
          : idArbitrary(ctx, type);
  return fc.oneof(
    { weight: 4, arbitrary: typed },
    { weight: 1, arbitrary: anyJson },
    { weight: 1, arbitrary: nastyString },
    { weight: 1, arbitrary: anyNumber },
  );
}

/** An object shaped like the input: any field may be missing, wrong, null; extra fields too. */
function randomObject(ctx: Ctx, shape: InputShape): fc.Arbitrary<Record<string, unknown>> {
  const model = Object.fromEntries(Object.entries(shape).map(([k, t]) => [k, valueFor(ctx, t)]));
  return fc
    .tuple(
      fc.record(model, { requiredKeys: [] }),
      fc.option(
        fc.dictionary(
          fc.oneof(
            fc.string({ maxLength: 10 }),
            fc.constantFrom('__proto__', 'constructor', 'userId', 'isDefault', 'tokenSecretEnc'),
          ),
          anyJson,
          { maxKeys: 3 },
        ),
        { nil: undefined },
      ),
    )
    .map(([known, extra]) => ({ ...(extra ?? {}), ...known }));
}

/** A valid base with one field replaced by anything, or dropped. */
function mutatedOne(
  ctx: Ctx,
  shape: InputShape,
  base: fc.Arbitrary<Record<string, unknown>>,
): fc.Arbitrary<Record<string, unknown>> {
  const keys = Object.keys(shape);
  return fc.tuple(base, fc.constantFrom(...keys), fc.boolean()).chain(([b, key, drop]) => {
    if (drop) {
      const { [key]: _dropped, ...rest } = b;
      return fc.constant(rest);
    }
    return valueFor(ctx, shape[key]!).map((v) => ({ ...b, [key]: v }));
  });
}

// ------------------------------------------------------------------------------ the table

interface MutationCase {
  name: string;
  /** The document; selection sets ask for a little of everything the mutation returns. */
  document: string;
  /** Each variable's type: a scalar, or an input object's fields. */
  variables: Record<string, Scalar | { input: InputShape }>;
  /** Variables that should pass validation (a base for "mostly valid" inputs). */
  valid: (ctx: Ctx) => fc.Arbitrary<Record<string, unknown>>;
  /** Strings that are secrets: never to be seen in a response. */
  secrets?: (variables: Record<string, unknown>) => unknown[];
}

const NODE_INPUT: InputShape = {
  name: 'String',
  host: 'String',
  port: 'Int',
  tokenId: 'String',
  tokenSecret: 'String',
  sshPassword: 'String',
  tlsFingerprint: 'String',
  allowInsecureTls: 'Boolean',
};
const NODE_SELECTION = 'id name host port tokenId isDefault hasSshPassword tlsFingerprint allowInsecureTls pveVersion';
const inputSecrets = (v: Record<string, unknown>) => {
  const input = v.input as Record<string, unknown> | undefined;
  return input && typeof input === 'object' ? [input.tokenSecret, input.sshPassword] : [];
};

const MUTATIONS: MutationCase[] = [
  {
    name: 'createNode',
    document: `mutation ($input: CreateNodeInput!) { createNode(input: $input) { ${NODE_SELECTION} } }`,
    variables: { input: { input: NODE_INPUT } },
    valid: (ctx) =>
      fc
        .record({ n: fc.nat(), ssh: fc.option(fc.string({ maxLength: 30 }), { nil: undefined }) })
        .map(({ n, ssh }) => ({
          input: nodeInputFor(ctx.sim, { name: `fz-${n}`, ...(ssh === undefined ? {} : { sshPassword: ssh }) }),
        })),
    secrets: inputSecrets,
  },
  {
    name: 'updateNode',
    document: `mutation ($input: UpdateNodeInput!) { updateNode(input: $input) { ${NODE_SELECTION} } }`,
    variables: { input: { input: { id: 'NodeId', ...NODE_INPUT } } },
    valid: (ctx) =>
      fc
        .record({ id: pick(() => ctx.nodeIds, ctx.foreignNodeId), n: fc.nat(), retest: fc.boolean() })
        .map(({ id, n, retest }) => ({
          input: {
            id,
            name: `fz-u-${n}`,
            ...(retest ? { host: ctx.sim.host, port: ctx.sim.port, tokenSecret: ctx.sim.token.secret } : {}),
          },
        })),
    secrets: inputSecrets,
  },
  {
    name: 'setDefaultNode',
    document: 'mutation ($id: ID!) { setDefaultNode(id: $id) { id isDefault } }',
    variables: { id: 'NodeId' },
    valid: (ctx) => pick(() => ctx.nodeIds, ctx.foreignNodeId).map((id) => ({ id })),
  },
  {
    name: 'testNodeConnection',
    document:
      'mutation ($id: ID!) { testNodeConnection(id: $id) { ok latencyMs version errorCode message fingerprint pveNodeNames } }',
    variables: { id: 'NodeId' },
    valid: (ctx) => pick(() => ctx.nodeIds, ctx.foreignNodeId).map((id) => ({ id })),
  },
  {
    name: 'registerContainer',
    document:
      'mutation ($input: RegisterContainerInput!) { registerContainer(input: $input) { id vmid hostname node { id } } }',
    variables: { input: { input: { nodeId: 'NodeId', vmid: 'Int', hostname: 'String' } } },
    valid: (ctx) =>
      fc
        .record({
          nodeId: pick(() => ctx.nodeIds, ctx.foreignNodeId),
          vmid: fc.integer({ min: 100, max: 999_999_999 }),
          hostname: fc.option(fc.constantFrom('ct-1', 'web.example.com', ''), { nil: undefined }),
        })
        .map((input) => ({ input })),
  },
  {
    name: 'unregisterContainer',
    document: 'mutation ($id: ID!) { unregisterContainer(id: $id) }',
    variables: { id: 'ContainerId' },
    valid: (ctx) => pick(() => ctx.containerIds, ctx.foreignContainerId).map((id) => ({ id })),
  },
  // The VMID mutations of the contract: fuzzed as soon as they are in the schema.
  {
    name: 'refreshVmidCache',
    document: 'mutation ($nodeId: ID!) { refreshVmidCache(nodeId: $nodeId) { nodeId taken reserved version } }',
    variables: { nodeId: 'NodeId' },
    valid: (ctx) => pick(() => ctx.nodeIds, ctx.foreignNodeId).map((nodeId) => ({ nodeId })),
  },
  {
    name: 'invalidateVmidCache',
    document: 'mutation ($nodeId: ID!) { invalidateVmidCache(nodeId: $nodeId) }',
    variables: { nodeId: 'NodeId' },
    valid: (ctx) => pick(() => ctx.nodeIds, ctx.foreignNodeId).map((nodeId) => ({ nodeId })),
  },
  {
    name: 'reserveVmid',
    document:
      'mutation ($nodeId: ID!, $vmid: Int, $ttlSeconds: Int) { reserveVmid(nodeId: $nodeId, vmid: $vmid, ttlSeconds: $ttlSeconds) { nodeId vmid expiresAt } }',
    variables: { nodeId: 'NodeId', vmid: 'Int', ttlSeconds: 'Int' },
    valid: (ctx) =>
      fc.record(
        {
          nodeId: pick(() => ctx.nodeIds, ctx.foreignNodeId),
          vmid: fc.integer({ min: 100, max: 999_999_999 }),
          ttlSeconds: fc.integer({ min: 1, max: 3_600 }),
        },
        { requiredKeys: ['nodeId'] },
      ),
  },
  {
    name: 'releaseVmid',
    document: 'mutation ($nodeId: ID!, $vmid: Int!) { releaseVmid(nodeId: $nodeId, vmid: $vmid) }',
    variables: { nodeId: 'NodeId', vmid: 'Int' },
    valid: (ctx) =>
      fc.record({
        nodeId: pick(() => ctx.nodeIds, ctx.foreignNodeId),
        vmid: fc.integer({ min: 100, max: 999_999_999 }),
      }),
  },
  // Last: it removes the nodes the other mutations work on.
  {
    name: 'deleteNode',
    document: 'mutation ($id: ID!) { deleteNode(id: $id) }',
    variables: { id: 'NodeId' },
    valid: (ctx) => pick(() => ctx.nodeIds, ctx.foreignNodeId).map((id) => ({ id })),
  },
];

/** Variables for a case: fully random shapes, or a valid base with one thing wrong, or valid. */
function variablesFor(ctx: Ctx, c: MutationCase): fc.Arbitrary<unknown> {
  const entries = Object.entries(c.variables);
  const randomVars = fc.record(
    Object.fromEntries(
      entries.map(([name, t]) => [
        name,
        typeof t === 'string'
          ? valueFor(ctx, t)
          : fc.oneof({ weight: 4, arbitrary: randomObject(ctx, t.input) }, { weight: 1, arbitrary: anyJson }),
      ]),
    ),
    { requiredKeys: [] },
  );
  const valid = c.valid(ctx);
  const oneWrong = valid.chain((v) => {
    const candidates = entries.flatMap(([name, t]) => {
      if (typeof t === 'string') return [valueFor(ctx, t).map((x) => ({ ...v, [name]: x }))];
      const base = v[name];
      if (!base || typeof base !== 'object') return [];
      return [mutatedOne(ctx, t.input, fc.constant(base as Record<string, unknown>)).map((x) => ({ ...v, [name]: x }))];
    });
    return candidates.length ? fc.oneof(...candidates) : fc.constant(v);
  });
  return fc.oneof(
    { weight: 4, arbitrary: randomVars },
    { weight: 4, arbitrary: oneWrong },
    { weight: 1, arbitrary: valid },
    { weight: 1, arbitrary: fc.constant(null) }, // no variables at all
  );
}

// ------------------------------------------------------------------------------ checks

function allStrings(value: unknown, out: string[] = []): string[] {
  if (typeof value === 'string') out.push(value);
  else if (Array.isArray(value)) for (const v of value) allStrings(v, out);
  else if (value && typeof value === 'object') for (const v of Object.values(value)) allStrings(v, out);
  return out;
}

interface Checked {
  status: number;
  body: {
    data?: Record<string, unknown> | null;
    errors?: Array<{ message: string; extensions?: Record<string, unknown> }>;
  };
}

/** Every answer is a GraphQL response a client can act on. Throws with the details otherwise. */
function checkResponse(
  c: MutationCase,
  variables: unknown,
  status: number,
  contentType: string | null,
  text: string,
): Checked {
  const fail = (why: string): never => {
    throw new Error(
      `${c.name}: ${why}\nstatus ${status}, body ${text.slice(0, 600)}\nvariables ${JSON.stringify(variables)?.slice(0, 600)}`,
    );
  };
  if (status !== 200 && status !== 400) fail(`HTTP status ${status} (expected 200 or 400)`);
  if (!contentType || !/json/.test(contentType)) fail(`content-type ${contentType}`);
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    fail('the body is not JSON');
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) fail('the body is not a JSON object');
  const b = body as Record<string, unknown>;
  const extra = Object.keys(b).filter((k) => !['data', 'errors', 'extensions'].includes(k));
  if (extra.length) fail(`unexpected top-level keys ${extra.join(', ')}`);
  if (!('data' in b) && !('errors' in b)) fail('neither data nor errors');
  if ('data' in b && b.data !== null && (typeof b.data !== 'object' || Array.isArray(b.data)))
    fail('data is neither null nor an object');
  if ('errors' in b) {
    if (!Array.isArray(b.errors) || b.errors.length === 0) fail('errors is not a non-empty list');
    for (const e of b.errors as unknown[]) {
      const err = e as { message?: unknown; extensions?: { code?: unknown; fields?: unknown } };
      if (typeof err?.message !== 'string') fail('an error without a message');
      const code = err.extensions?.code;
      if (!isKnownCode(code)) fail(`an error with code ${JSON.stringify(code)} (message: ${String(err.message)})`);
      if (code === 'BAD_USER_INPUT') {
        const fields = err.extensions?.fields;
        if (
          !fields ||
          typeof fields !== 'object' ||
          !Object.values(fields).every((m) => typeof m === 'string') ||
          Object.keys(fields).length === 0
        ) {
          fail('BAD_USER_INPUT without extensions.fields { fieldPath: message }');
        }
      }
    }
  } else if (b.data && (b.data as Record<string, unknown>)[c.name] === undefined) {
    fail(`no errors and no data.${c.name}`);
  }
  // Secrets sent are never echoed back (in messages, extensions or data).
  if (c.secrets && variables && typeof variables === 'object') {
    const sent = allStrings(variables);
    const returned = allStrings(b);
    for (const secret of c.secrets(variables as Record<string, unknown>)) {
      if (typeof secret !== 'string' || secret.trim().length < 12 || new Set(secret).size < 4) continue;
      // A secret that equals or sits inside another field's value (the generators reuse
      // strings, e.g. the same SQL-ish string as name and sshPassword) may be echoed as that
      // field: only a value sent once, in the secret field alone, must never come back.
      if (sent.filter((s) => s.includes(secret)).length > 1) continue;
      if (returned.some((r) => r.includes(secret)))
        fail(`the response echoes a secret that was sent (${secret.slice(0, 20)}…)`);
    }
  }
  return { status, body: b };
}

// ------------------------------------------------------------------------------ the run

let server: TestServer;
let sim: Simulator;
let token: string;
let ctx: Ctx;
const outcomes = new Map<string, Map<string, number>>();

async function post(body: string): Promise<{ status: number; contentType: string | null; text: string }> {
  const res = await fetch(server.graphqlUrl, {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/graphql-response+json, application/json',
      authorization: `Bearer ${token}`,
    },
    body,
  });
  return { status: res.status, contentType: res.headers.get('content-type'), text: await res.text() };
}

async function gqlOk<T>(query: string, variables: Record<string, unknown>, as: string): Promise<T> {
  const res = await fetch(server.graphqlUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${as}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = (await res.json()) as { data?: T; errors?: unknown };
  expect(body.errors, JSON.stringify(body.errors)).toBeUndefined();
  return body.data!;
}

async function refreshPools(): Promise<void> {
  const { nodes } = await gqlOk<{ nodes: Array<{ id: string; containers: Array<{ id: string }> }> }>(
    '{ nodes { id containers { id } } }',
    {},
    token,
  );
  ctx.nodeIds = nodes.map((n) => n.id);
  ctx.containerIds = nodes.flatMap((n) => n.containers.map((c) => c.id));
}

beforeAll(async () => {
  [server, sim] = await Promise.all([startTestServer(), startTestSimulator()]);
  token = (await server.createUser('fuzzer')).token;
  const other = await server.createUser('bystander');

  const create = `mutation ($input: CreateNodeInput!) { createNode(input: $input) { id } }`;
  const register = `mutation ($input: RegisterContainerInput!) { registerContainer(input: $input) { id } }`;
  const foreign = await gqlOk<{ createNode: { id: string } }>(
    create,
    { input: nodeInputFor(sim, { name: 'theirs' }) },
    other.token,
  );
  const foreignCt = await gqlOk<{ registerContainer: { id: string } }>(
    register,
    { input: { nodeId: foreign.createNode.id, vmid: 500 } },
    other.token,
  );
  // All three nodes reach the one simulated cluster, where a VMID is registered once.
  for (const [i, name] of ['alpha', 'beta', 'gamma'].entries()) {
    const { createNode } = await gqlOk<{ createNode: { id: string } }>(
      create,
      { input: nodeInputFor(sim, { name }) },
      token,
    );
    await gqlOk(register, { input: { nodeId: createNode.id, vmid: 200 + i, hostname: `${name}-ct` } }, token);
  }
  ctx = {
    nodeIds: [],
    containerIds: [],
    foreignNodeId: foreign.createNode.id,
    foreignContainerId: foreignCt.registerContainer.id,
    sim,
  };
  await refreshPools();
});

afterAll(async () => {
  await Promise.all([server?.stop(), sim?.stop()]);
});

describe('fuzzing every mutation with variables a client could send', () => {
  it('covers every mutation of the schema', () => {
    const covered = new Set(MUTATIONS.map((m) => m.name));
    expect(schemaMutations.length).toBeGreaterThan(0);
    expect(
      schemaMutations.filter((m) => !covered.has(m)),
      'add these mutations to the MUTATIONS table',
    ).toEqual([]);
  });

  for (const c of MUTATIONS) {
    it.skipIf(!inSchema(c.name))(
      `${c.name}: every answer is well-formed with a known error code`,
      async () => {
        await refreshPools();
        const seen = new Map<string, number>();
        outcomes.set(c.name, seen);
        await fc.assert(
          fc.asyncProperty(variablesFor(ctx, c), async (variables) => {
            const { status, contentType, text } = await post(JSON.stringify({ query: c.document, variables }));
            const { body } = checkResponse(c, variables, status, contentType, text);
            const outcome = body.errors ? String(body.errors[0]?.extensions?.code) : 'ok';
            seen.set(outcome, (seen.get(outcome) ?? 0) + 1);
            if (
              outcome === 'ok' &&
              (c.name === 'createNode' ||
                c.name === 'registerContainer' ||
                c.name === 'deleteNode' ||
                c.name === 'unregisterContainer')
            ) {
              await refreshPools();
            }
          }),
          { numRuns: NUM_RUNS, interruptAfterTimeLimit: 40_000 },
        );
        // Not a requirement, but a run that never gets past validation fuzzes nothing deeper.
        expect(
          [...seen.keys()].some((k) => k !== 'BAD_USER_INPUT'),
          JSON.stringify(Object.fromEntries(seen)),
        ).toBe(true);
      },
      90_000,
    );
  }

  /**
   * Requests whose shape is wrong before any variable is looked at. Yoga answers these 400
   * with its own code BAD_REQUEST, which the contract's list does not have.
   */
  it.each([
    ['variables is an array', { variables: [] }],
    ['variables is a string', { variables: '{"id":"x"}' }],
    ['variables is a number', { variables: 1 }],
    ['query is missing', { query: undefined }],
    ['query is not a string', { query: { mutation: 'deleteNode' } }],
    ['operationName is not a string', { operationName: ['x'] }],
    ['extensions is not an object', { extensions: 'x' }],
  ])('answers a malformed request (%s) with 400 and a code from the contract', async (_what, change) => {
    const c = MUTATIONS.find((m) => m.name === 'deleteNode')!;
    const body = JSON.stringify({ query: c.document, variables: { id: ctx.foreignNodeId }, ...change });
    const { status, contentType, text } = await post(body);
    expect(status, text).toBe(400);
    checkResponse(c, change, status, contentType, text);
  });

  it('answers a body that is not JSON with 400 and a code from the contract', async () => {
    const c = MUTATIONS.find((m) => m.name === 'deleteNode')!;
    const { status, contentType, text } = await post(
      '{"query": "mutation { deleteNode(id: \\"x\\") }", "variables": {',
    );
    expect(status, text).toBe(400);
    checkResponse(c, null, status, contentType, text);
  });

  it('does not echo the body of a POST that is not JSON (a secret in it stays out of the response)', async () => {
    const secret = 'pvgfuzz-SECRET-0123456789abcdef';
    const broken =
      JSON.stringify({
        query: MUTATIONS[0]!.document,
        variables: { input: { ...nodeInputFor(sim), tokenSecret: secret } },
      }).slice(0, -1) + ',}';
    const { status, text } = await post(broken);
    expect(status).toBe(400);
    expect(text).not.toContain(secret);
  });

  it('leaves the database consistent: one default per user with nodes, secrets encrypted, valid rows', async () => {
    const client = new pg.Client({ connectionString: server.databaseUrl });
    await client.connect();
    try {
      const q = async (sql: string) => (await client.query(sql)).rows;
      expect(
        await q(`
        SELECT user_id, count(*) FILTER (WHERE is_default) AS defaults, count(*) AS nodes
        FROM proxmox_nodes GROUP BY user_id HAVING count(*) FILTER (WHERE is_default) <> 1`),
      ).toEqual([]);
      expect(
        await q(`
        SELECT id, left(token_secret_enc, 12) AS secret, left(ssh_password_enc, 12) AS ssh FROM proxmox_nodes
        WHERE token_secret_enc NOT LIKE 'enc:v1:%' OR (ssh_password_enc IS NOT NULL AND ssh_password_enc NOT LIKE 'enc:v1:%')`),
      ).toEqual([]);
      expect(
        await q(`
        SELECT c.id, c.node_id FROM containers c LEFT JOIN proxmox_nodes n ON n.id = c.node_id
        WHERE n.id IS NULL`),
      ).toEqual([]);
      expect(
        await q(`
        SELECT user_id, lower(name) AS name, count(*) FROM proxmox_nodes GROUP BY user_id, name HAVING count(*) > 1`),
      ).toEqual([]);
      // What validation promises about stored values: one normalised form, nothing out of range.
      expect(
        await q(`
        SELECT id, name, host, port, token_id, tls_fingerprint FROM proxmox_nodes
        WHERE port NOT BETWEEN 1 AND 65535
           OR name <> btrim(name) OR name = '' OR name ~ '[[:cntrl:]]'
           OR host <> lower(host) OR host = ''
           OR token_id !~ '^[^[:space:]@!=:]+@[A-Za-z0-9._-]+![A-Za-z][A-Za-z0-9._-]*$'
           OR (tls_fingerprint IS NOT NULL AND tls_fingerprint !~ '^([0-9A-F]{2}:){31}[0-9A-F]{2}$')`),
      ).toEqual([]);
      expect(await q(`SELECT id, vmid FROM containers WHERE vmid NOT BETWEEN 100 AND 999999999`)).toEqual([]);
      // The fuzzing user's rows really were exercised.
      const [{ n }] = (await client.query<{ n: string }>(`SELECT count(*) AS n FROM proxmox_nodes`)).rows as [
        { n: string },
      ];
      expect(Number(n)).toBeGreaterThan(0);
    } finally {
      await client.end();
    }
    console.info(
      'fuzz outcomes per mutation (first error code or ok):\n' +
        [...outcomes].map(([name, seen]) => `  ${name}: ${JSON.stringify(Object.fromEntries(seen))}`).join('\n'),
    );
  });
});
