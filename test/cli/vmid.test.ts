import { spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/vmid.js';
import { nodeInputFor, type Simulator, startTestSimulator } from '../support/simulator.js';
import { docBlock, readmeBlock, ROOT, userEnv } from '../support/readme.js';
import { startTestServer, type TestServer, uniqueRedisPrefix } from '../support/test-server.js';

const BIN = path.join(ROOT, 'bin/pvegraph.js');
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a process to its end; never throws on a non-zero exit. */
function exec(file: string, args: string[], env: NodeJS.ProcessEnv, input?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { cwd: ROOT, env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    child.stdin.end(input ?? '');
  });
}

/** The last line of stdout. */
const last = (r: Result) => r.stdout.trim().split('\n').at(-1)!;

/**
 * `npx pvegraph vmid …` as a process against real servers: two instances of one deployment
 * (one database, one Redis prefix) and the HTTPS Proxmox simulator.
 */
describe('npx pvegraph vmid (CLI against running servers)', () => {
  let a: TestServer;
  let b: TestServer;
  let sim: Simulator;
  let token: string;
  let nodeId: string;
  let shims: string;
  let env: NodeJS.ProcessEnv;

  const gql = async <T>(query: string, variables: Record<string, unknown> = {}, server = a): Promise<T> => {
    const res = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({ query, variables }),
    });
    const body = (await res.json()) as { data?: T; errors?: unknown[] };
    expect(body.errors).toBeUndefined();
    return body.data!;
  };
  const reserved = async () =>
    (
      await gql<{ vmidsTaken: { reserved: number[] } }>('query($n: ID!) { vmidsTaken(nodeId: $n) { reserved } }', {
        n: nodeId,
      })
    ).vmidsTaken.reserved;
  const isTaken = async (vmid: number) =>
    (
      await gql<{ isVmidTaken: boolean }>('query($n: ID!, $v: Int!) { isVmidTaken(nodeId: $n, vmid: $v) }', {
        n: nodeId,
        v: vmid,
      })
    ).isVmidTaken;

  /** `node bin/pvegraph.js vmid …` (what `npx pvegraph vmid …` runs). */
  const cli = (args: string[], opts: { env?: Record<string, string>; input?: string } = {}) =>
    exec(process.execPath, [BIN, 'vmid', ...args], { ...env, ...opts.env }, opts.input);
  /** A documented shell block, run by /bin/sh with the stand-ins for `npx` and `pct` first on PATH. */
  const sh = (script: string, extra: Record<string, string> = {}) =>
    exec('/bin/sh', ['-c', script], { ...env, ...extra });

  beforeAll(async () => {
    const prefix = uniqueRedisPrefix();
    a = await startTestServer({ redisKeyPrefix: prefix });
    [b, sim] = await Promise.all([
      startTestServer({ databaseUrl: a.databaseUrl, redisKeyPrefix: prefix }),
      startTestSimulator({ guests: 5 }),
    ]);
    token = (await a.createUser('ci')).token;
    nodeId = (
      await gql<{ createNode: { id: string } }>('mutation($i: CreateNodeInput!) { createNode(input: $i) { id } }', {
        i: nodeInputFor(sim, { name: 'pve1' }),
      })
    ).createNode.id;

    // `npx pvegraph` runs this checkout's CLI; `pct` logs its arguments and exits PCT_EXIT.
    shims = await mkdtemp(path.join(tmpdir(), 'pvg-cli-'));
    await writeFile(
      path.join(shims, 'npx'),
      `#!/bin/sh\n[ "$1" = pvegraph ] || { echo "npx stand-in: pvegraph only" >&2; exit 127; }\nshift\nexec "${process.execPath}" "${BIN}" "$@"\n`,
    );
    await writeFile(path.join(shims, 'pct'), '#!/bin/sh\necho "pct $*" >> "$PCT_LOG"\nexit "${PCT_EXIT:-0}"\n');
    await Promise.all([chmod(path.join(shims, 'npx'), 0o755), chmod(path.join(shims, 'pct'), 0o755)]);
    env = userEnv({
      PATH: `${shims}:${process.env.PATH}`,
      PVEGRAPH_URL: a.url,
      PVEGRAPH_TOKEN: token,
      PCT_LOG: path.join(shims, 'pct.log'),
    });
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop(), sim?.stop()]);
    if (shims) await rm(shims, { recursive: true, force: true });
  });

  it('reserve prints the VMID as the last line: node by name and by id, base URL and /graphql URL, token from a file', async () => {
    const byName = await cli(['reserve', '--url', a.url, '--node', 'pve1']);
    expect(byName).toMatchObject({ code: 0, stderr: '' });
    expect(byName.stdout).toMatch(/^\d+\n$/);
    const byId = await cli(['reserve', '--url', b.graphqlUrl, '--node', nodeId, '--ttl', '60']);
    expect(byId).toMatchObject({ code: 0, stderr: '' });
    const file = path.join(shims, 'token');
    await writeFile(file, `${token}\n`);
    // --token-file wins over PVEGRAPH_TOKEN.
    const fromFile = await cli(['reserve', '--url', `${a.url}/`, '--node', 'pve1', '--token-file', file], {
      env: { PVEGRAPH_TOKEN: 'pvg_wrong' },
    });
    expect(fromFile.code).toBe(0);
    const vmids = [byName, byId, fromFile].map((r) => Number(last(r)));
    expect(new Set(vmids).size).toBe(3);
    expect(await reserved()).toEqual(expect.arrayContaining(vmids));

    const released = await cli(['release', '--url', a.url, '--node', 'pve1', '--vmid', String(vmids[0])]);
    expect(released).toMatchObject({ code: 0, stdout: `released ${vmids[0]}\n` });
    for (const vmid of vmids.slice(1))
      expect((await cli(['release', '--node', nodeId, '--vmid', String(vmid)])).code).toBe(0);
    expect(await reserved()).not.toEqual(expect.arrayContaining([vmids[1]]));
  });

  it('docs/automation.md: the command lines run as shown', async () => {
    const lines = (await docBlock('automation.md', 'commands')).trim().split('\n');
    expect(lines).toHaveLength(6);
    const out: Result[] = [];
    for (const line of lines) {
      const r = await sh(line, { CI_JOB_ID: '1001' });
      expect(r, line).toMatchObject({ code: 0 });
      out.push(r);
    }
    expect(last(out[0]!)).toMatch(/^\d+$/);
    expect(last(out[1]!)).toBe('5000');
    expect(last(out[2]!)).toBe('4242');
    expect(last(out[3]!)).toMatch(/^\d+$/);
    expect(last(out[4]!)).toMatch(UUID); // the container's id
    expect(last(out[5]!)).toBe('released 5000');
    // 4242 was consumed: registered, still taken, no longer reserved.
    expect(await isTaken(4242)).toBe(true);
    expect(await reserved()).not.toContain(4242);
    // The keyed line again (a retry): the same VMID.
    expect(last(await sh(lines[3]!, { CI_JOB_ID: '1001' }))).toBe(last(out[3]!));
    await cli(['release', '--node', 'pve1', '--vmid', last(out[0]!)]);
    await cli(['release', '--node', 'pve1', '--vmid', last(out[3]!)]);
  });

  it('docs/automation.md: the job script registers the container when pct succeeds and releases the VMID when it fails', async () => {
    const job = await docBlock('automation.md', 'job');
    const ok = await sh(job, { CI_JOB_ID: '2001', PCT_EXIT: '0' });
    expect(ok.code, ok.stderr).toBe(0);
    const log = await readFile(path.join(shims, 'pct.log'), 'utf8');
    const vmid = Number(/pct create (\d+) /.exec(log)![1]);
    expect(last(ok)).toMatch(UUID); // consume printed the container's id
    expect(await isTaken(vmid)).toBe(true);
    expect(await reserved()).not.toContain(vmid);

    // The same job again (a retry after it finished): the key answers the consumed VMID.
    const again = await cli(['reserve', '--node', 'pve1', '--key', 'ci-2001']);
    expect(again.code).toBe(0);
    expect(last(again)).toBe(String(vmid));
    expect(again.stderr).toMatch(/is a guest already/);

    const failed = await sh(job, { CI_JOB_ID: '2002', PCT_EXIT: '1' });
    expect(failed.code).toBe(1);
    const lost = Number(/released (\d+)/.exec(failed.stdout)![1]);
    expect(lost).not.toBe(vmid);
    expect(await isTaken(lost)).toBe(false);
  });

  it('docs/automation.md: the exit-status example branches on 0 and 3', async () => {
    const script = await docBlock('automation.md', 'exit-status');
    const first = await sh(script);
    expect(first.code).toBe(0);
    expect(first.stdout).toMatch(/4300 is ours for 10 minutes/);
    const second = await sh(script);
    expect(second.code).toBe(0);
    expect(second.stdout).toMatch(/4300 is taken or reserved/);
    expect(second.stderr).toMatch(/^pvegraph: CONFLICT: .*4300.*\n$/);
    await cli(['release', '--node', 'pve1', '--vmid', '4300']);
  });

  it(
    '50 concurrent reserves against two instances (10 processes at a time) print 50 distinct VMIDs',
    { timeout: 120_000 },
    async () => {
      const before = await reserved();
      const started = Date.now();
      const results: Result[] = [];
      let next = 0;
      const worker = async () => {
        for (let i = next++; i < 50; i = next++) {
          const server = i % 2 === 0 ? a : b;
          results[i] = await cli([
            'reserve',
            '--url',
            server.url,
            '--node',
            i % 4 < 2 ? 'pve1' : nodeId,
            '--ttl',
            '300',
          ]);
        }
      };
      await Promise.all(Array.from({ length: 10 }, worker));
      const seconds = (Date.now() - started) / 1000;
      for (const r of results) expect(r, r.stderr).toMatchObject({ code: 0, stderr: '' });
      const vmids = results.map((r) => Number(last(r)));
      expect(new Set(vmids).size).toBe(50);
      for (const vmid of vmids) expect(before).not.toContain(vmid);
      expect(await reserved()).toEqual(expect.arrayContaining(vmids));
      // Each process costs about 0.3 s of CPU to start (Node + tsx); 50 on 2 shared cores took
      // 15–30 s here. The bound leaves room for a loaded machine.
      expect(seconds).toBeLessThan(90);
      for (const vmid of vmids)
        await gql('mutation($n: ID!, $v: Int!) { releaseVmid(nodeId: $n, vmid: $v) }', { n: nodeId, v: vmid });
    },
  );

  it('--key: a retry answers the same VMID and expiry on either instance, another key another VMID; concurrent calls with one key hold one', async () => {
    const keyed = (key: string, url = a.url, extra: string[] = []) =>
      cli(['reserve', '--url', url, '--node', 'pve1', '--key', key, ...extra]);
    const first = await keyed('build-7');
    expect(first.code).toBe(0);
    const retry = await keyed('build-7', b.url, ['--ttl', '30', '--min', '9000']);
    expect(last(retry)).toBe(last(first));
    const other = await keyed('build-8');
    expect(last(other)).not.toBe(last(first));

    // Same VMID and the same expiry: nothing was reserved again.
    const viaApi = async (key: string) =>
      (
        await gql<{ reserveVmid: { vmid: number; expiresAt: string; consumed: boolean } }>(
          'mutation($n: ID!, $k: String) { reserveVmid(nodeId: $n, key: $k) { vmid expiresAt consumed } }',
          { n: nodeId, k: key },
        )
      ).reserveVmid;
    const one = await viaApi('build-7');
    expect(one).toMatchObject({ vmid: Number(last(first)), consumed: false });
    expect((await viaApi('build-7')).expiresAt).toBe(one.expiresAt);

    // Released: the key reserves again, its former VMID (free again) first.
    await cli(['release', '--node', 'pve1', '--vmid', last(first)]);
    const renewed = await viaApi('build-7');
    expect(renewed.vmid).toBe(one.vmid);
    expect(renewed.expiresAt).not.toBe(one.expiresAt);

    // Eight pipelines retrying at once with one key, through both instances: one VMID, one reservation.
    const before = await reserved();
    const racing = await Promise.all(Array.from({ length: 8 }, (_, i) => keyed('race-1', i % 2 ? a.url : b.url)));
    for (const r of racing) expect(r, r.stderr).toMatchObject({ code: 0 });
    expect(new Set(racing.map(last)).size).toBe(1);
    const after = await reserved();
    expect(after.filter((v) => !before.includes(v))).toEqual([Number(last(racing[0]!))]);

    for (const v of [one.vmid, Number(last(other)), Number(last(racing[0]!))])
      await cli(['release', '--node', 'pve1', '--vmid', String(v)]);
  });

  it('--key: after the reservation lapsed, a guest Proxmox lists with its VMID (created by Terraform) is still the answer', async () => {
    const first = await cli(['reserve', '--node', 'pve1', '--key', 'tf-web-2', '--ttl', '1']);
    const vmid = Number(last(first));
    sim.addGuest({ vmid, type: 'lxc', name: 'web-2' });
    await new Promise((r) => setTimeout(r, 1_200));
    expect(await reserved()).not.toContain(vmid);
    const later = await cli(['reserve', '--node', 'pve1', '--key', 'tf-web-2']);
    expect(later.code).toBe(0);
    expect(last(later)).toBe(String(vmid));
    expect(later.stderr).toMatch(/consumed/);
    expect(await reserved()).not.toContain(vmid);
  });

  it('--terraform: the documented query on stdin gives one JSON object of strings; a re-run the same; errors on stderr', async () => {
    const [hcl, stdin, documented] = await Promise.all([
      readmeBlock('VMIDs for scripts', 'terraform'),
      readmeBlock('VMIDs for scripts', 'terraform-stdin'),
      readmeBlock('VMIDs for scripts', 'terraform-stdout'),
    ]);
    // The module's program and query are what the protocol test feeds.
    expect(hcl).toContain('program = ["npx", "pvegraph", "vmid", "reserve", "--terraform"]');
    const queryKeys = [.../query = \{([\s\S]*?)\n {2}\}/.exec(hcl)![1]!.matchAll(/^\s+(\w+)\s+=/gm)]
      .map((m) => m[1])
      .sort();
    const sent = JSON.parse(stdin) as Record<string, string>;
    expect(Object.keys(sent).sort()).toEqual(queryKeys);
    expect(hcl).toMatch(/vm_id\s+= tonumber\(data\.external\.vmid\.result\.vmid\)/);

    const input = stdin.replace('https://pvegraph.example.com', a.url);
    const run = () => exec('/bin/sh', ['-c', 'npx pvegraph vmid reserve --terraform'], env, input);
    const out = await run();
    expect(out).toMatchObject({ code: 0, stderr: '' });
    const result = JSON.parse(out.stdout) as Record<string, unknown>;
    const example = JSON.parse(documented) as Record<string, string>;
    expect(Object.keys(result)).toEqual(Object.keys(example));
    for (const value of Object.values(result)) expect(typeof value).toBe('string');
    expect(result).toMatchObject({ vmid: example.vmid, node_id: nodeId });
    expect(new Date(result.expires_at as string).getTime()).toBeGreaterThan(Date.now() + 1_700_000);
    // Terraform reads the data source again at apply: the same answer.
    expect(JSON.parse((await run()).stdout)).toEqual(result);

    // The token from token_file instead of the environment.
    const file = path.join(shims, 'tf-token');
    await writeFile(file, token);
    const withFile = await cli(['reserve', '--terraform'], {
      env: { PVEGRAPH_TOKEN: '' },
      input: JSON.stringify({ ...sent, url: a.url, token_file: file }),
    });
    expect(JSON.parse(withFile.stdout)).toEqual(result);

    // Errors: stderr and a non-zero exit, nothing on stdout.
    const bad = async (stdinText: string, code: number, message: RegExp, extra: Record<string, string> = {}) => {
      const r = await cli(['reserve', '--terraform'], { input: stdinText, env: extra });
      expect(r).toMatchObject({ code, stdout: '' });
      expect(r.stderr).toMatch(message);
    };
    await bad('not json', EXIT.USAGE, /^pvegraph: BAD_USER_INPUT: stdin must hold one JSON object/);
    await bad(JSON.stringify({ ...sent, url: a.url, token: token }), EXIT.USAGE, /do not put the token in the query/);
    await bad(JSON.stringify({ ...sent, url: a.url, nodes: 'x' }), EXIT.USAGE, /unknown query key "nodes"/);
    await bad(
      JSON.stringify({ ...sent, url: a.url, node: 'nope' }),
      EXIT.NOT_FOUND,
      /^pvegraph: NOT_FOUND: no node named "nope"/,
    );
    await bad(JSON.stringify({ ...sent, url: a.url }), EXIT.AUTH, /^pvegraph: UNAUTHENTICATED: /, {
      PVEGRAPH_TOKEN: '',
    });
    expect((await cli(['reserve', '--terraform', '--node', 'pve1'], { input: input })).code).toBe(EXIT.USAGE);
    await cli(['release', '--node', 'pve1', '--vmid', result.vmid as string]);
  });

  it('docs/automation.md: the Ansible tasks run: reserve (twice, the same VMID), consume, release answers 7 (allowed); on failure release gives it back', async () => {
    const yaml = await readmeBlock('VMIDs for scripts', 'ansible');
    const cmds = [...yaml.matchAll(/^\s+cmd: (npx pvegraph .*)$/gm)].map((m) => m[1]!);
    expect(cmds.map((c) => c.split(' ')[3])).toEqual(['reserve', 'consume', 'release']);
    const allowed = /failed_when: released\.rc not in \[([\d, ]+)\]/.exec(yaml)![1]!.split(',').map(Number);
    expect(allowed).toEqual([EXIT.OK, EXIT.NOT_RESERVED]);
    const [reserveCmd, consumeCmd, releaseCmd] = cmds as [string, string, string];
    const jinja = (cmd: string, host: string, vmid = '') =>
      cmd
        .replaceAll('{{ pvegraph_url }}', a.url)
        .replaceAll('{{ inventory_hostname }}', host)
        .replaceAll('{{ vmid }}', vmid);

    const reservedOnce = await sh(jinja(reserveCmd, 'web-3'));
    expect(reservedOnce.code).toBe(0);
    const vmid = last(reservedOnce);
    expect(last(await sh(jinja(reserveCmd, 'web-3')))).toBe(vmid); // the play re-run
    expect((await sh(jinja(consumeCmd, 'web-3', vmid))).code).toBe(0);
    expect(await isTaken(Number(vmid))).toBe(true);
    // `always:` skips the release after consume (when:); were it run, 7 is allowed.
    expect((await sh(jinja(releaseCmd, 'web-3', vmid))).code).toBe(EXIT.NOT_RESERVED);

    // The container could not be created: always: releases the VMID.
    const failing = last(await sh(jinja(reserveCmd, 'web-4')));
    expect(await isTaken(Number(failing))).toBe(true);
    expect((await sh(jinja(releaseCmd, 'web-4', failing))).code).toBe(EXIT.OK);
    expect(await isTaken(Number(failing))).toBe(false);
  });

  describe('exit status and errors: one stderr line with the code, nothing on stdout', () => {
    const expectFailure = (r: Result, code: number, line: RegExp) => {
      expect(r.code, r.stderr).toBe(code);
      expect(r.stdout).toBe('');
      expect(r.stderr).toMatch(line);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    };
    let http: Server | undefined;
    afterAll(() => new Promise<void>((resolve) => (http ? http.close(() => resolve()) : resolve())));

    it("2 usage / BAD_USER_INPUT (also the server's); --help is 0", async () => {
      expectFailure(await cli(['reserve', '--url', a.url]), 2, /^pvegraph: BAD_USER_INPUT: --node is required$/m);
      expectFailure(
        await cli(['reserve', '--node', 'pve1', '--ttl', 'soon']),
        2,
        /^pvegraph: BAD_USER_INPUT: --ttl must be a whole number/,
      );
      expectFailure(
        await cli(['reserve', '--node', 'pve1', '--bogus']),
        2,
        /^pvegraph: BAD_USER_INPUT: Unknown option '--bogus'/,
      );
      expectFailure(
        await cli(['consume', '--node', 'pve1', '--vmid', '4000', '--key', 'k']),
        2,
        /--key does not apply to consume/,
      );
      expectFailure(await cli(['reserve', '--url', 'ftp://x', '--node', 'pve1']), 2, /--url must be http\(s\)/);
      expectFailure(await cli(['destroy']), 2, /unknown command "destroy"/);
      // The server's BAD_USER_INPUT: out-of-range ttl, a key with a control character or too long.
      expectFailure(
        await cli(['reserve', '--node', 'pve1', '--ttl', '0']),
        2,
        /^pvegraph: BAD_USER_INPUT: ttlSeconds must be an integer from 1 to 86400/,
      );
      expectFailure(
        await cli(['reserve', '--node', 'pve1', '--key', 'a\u0007b']),
        2,
        /^pvegraph: BAD_USER_INPUT: key must be 1 to 200 printable characters/,
      );
      expectFailure(
        await cli(['reserve', '--node', 'pve1', '--key', 'k'.repeat(201)]),
        2,
        /^pvegraph: BAD_USER_INPUT: key must be/,
      );
      expectFailure(await cli(['reserve', '--node', 'pve1', '--key', '']), 2, /^pvegraph: BAD_USER_INPUT: key must be/);
      const help = await cli(['--help']);
      expect(help.code).toBe(0);
      for (const code of Object.values(EXIT)) expect(help.stdout).toMatch(new RegExp(`^  ${code}  `, 'm'));
    });

    it("3 CONFLICT: a guest's VMID, a reserved one, a key that stands for another VMID", async () => {
      expectFailure(
        await cli(['reserve', '--node', 'pve1', '--vmid', '100']),
        3,
        /^pvegraph: CONFLICT: VMID 100 is already taken/,
      );
      const held = await cli(['reserve', '--node', 'pve1', '--key', 'k-3']);
      expectFailure(
        await cli(['reserve', '--url', b.url, '--node', 'pve1', '--vmid', last(held)]),
        3,
        /^pvegraph: CONFLICT: VMID \d+ is already reserved/,
      );
      expectFailure(
        await cli(['reserve', '--node', 'pve1', '--key', 'k-3', '--vmid', '7777']),
        3,
        /^pvegraph: CONFLICT: The key answers VMID/,
      );
      await cli(['release', '--node', 'pve1', '--vmid', last(held)]);
    });

    it("4 PROXMOX_*: the node's Proxmox is unreachable", async () => {
      const down = await startTestSimulator({ guests: 1 });
      await gql('mutation($i: CreateNodeInput!) { createNode(input: $i) { id } }', {
        i: nodeInputFor(down, { name: 'pve-down' }),
      });
      await down.stop();
      expectFailure(await cli(['reserve', '--node', 'pve-down']), 4, /^pvegraph: PROXMOX_UNREACHABLE: /);
    });

    it('5 UNAUTHENTICATED: a bad token, no token, an empty token file', async () => {
      expectFailure(
        await cli(['reserve', '--node', 'pve1'], { env: { PVEGRAPH_TOKEN: `pvg_${'A'.repeat(43)}` } }),
        5,
        /^pvegraph: UNAUTHENTICATED: /,
      );
      expectFailure(
        await cli(['reserve', '--node', nodeId], { env: { PVEGRAPH_TOKEN: 'not-a-token' } }),
        5,
        /^pvegraph: UNAUTHENTICATED: /,
      );
      expectFailure(
        await cli(['reserve', '--node', 'pve1'], { env: { PVEGRAPH_TOKEN: '' } }),
        5,
        /^pvegraph: UNAUTHENTICATED: no API token/,
      );
      const empty = path.join(shims, 'empty');
      await writeFile(empty, '\n');
      expectFailure(
        await cli(['release', '--node', 'pve1', '--vmid', '4000', '--token-file', empty]),
        5,
        /token file .* is empty/,
      );
    });

    it("6 NOT_FOUND: no node of that name, an id that is not the caller's", async () => {
      expectFailure(
        await cli(['reserve', '--node', 'pve9']),
        6,
        /^pvegraph: NOT_FOUND: no node named "pve9" \(your nodes: pve1/,
      );
      expectFailure(
        await cli(['reserve', '--node', '00000000-0000-4000-8000-000000000000']),
        6,
        /^pvegraph: NOT_FOUND: Node 0{8}-/,
      );
      const stranger = (await a.createUser()).token;
      expectFailure(
        await cli(['release', '--node', nodeId, '--vmid', '4000'], { env: { PVEGRAPH_TOKEN: stranger } }),
        6,
        /^pvegraph: NOT_FOUND: /,
      );
    });

    it('7 release: no reservation to end', async () => {
      expectFailure(
        await cli(['release', '--node', 'pve1', '--vmid', '4001']),
        7,
        /^pvegraph: NOT_RESERVED: no reservation of VMID 4001/,
      );
    });

    it('8 try again later: the server unreachable, or not answering in time', async () => {
      const closed = createServer();
      await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
      const port = (closed.address() as AddressInfo).port;
      await new Promise<void>((resolve) => closed.close(() => resolve()));
      expectFailure(
        await cli(['reserve', '--url', `http://127.0.0.1:${port}`, '--node', 'pve1']),
        8,
        /^pvegraph: UNREACHABLE: cannot reach http:\/\/127\.0\.0\.1:\d+\/graphql: ECONNREFUSED\n$/,
      );

      http = createServer(() => undefined); // accepts, never answers
      await new Promise<void>((resolve) => http!.listen(0, '127.0.0.1', resolve));
      const silent = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
      expectFailure(
        await cli(['reserve', '--url', silent, '--node', nodeId, '--timeout', '1']),
        8,
        /^pvegraph: TIMEOUT: no answer from .* within 1 s\n$/,
      );
    });

    it('1 anything else: an answer that is not GraphQL', async () => {
      const other = createServer((_req, res) => res.writeHead(404, { 'content-type': 'text/html' }).end('<h1>no</h1>'));
      await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
      try {
        const url = `http://127.0.0.1:${(other.address() as AddressInfo).port}`;
        expectFailure(
          await cli(['reserve', '--url', url, '--node', nodeId]),
          1,
          /^pvegraph: HTTP_404: .* answered HTTP 404 without a GraphQL response\n$/,
        );
      } finally {
        await new Promise<void>((resolve) => other.close(() => resolve()));
      }
    });
  });
});
