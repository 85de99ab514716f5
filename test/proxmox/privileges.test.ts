import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  REQUIRED_PRIVILEGES,
  holds,
  missingPrivileges,
  privilegeLabel,
  requiredPaths,
  requiredPrivilegeNames,
  type PermissionMap,
} from '../../src/proxmox/privileges.js';
import type { ProxmoxClient } from '../../src/proxmox/index.js';
import { startSimulator, type SimGrants, type Simulator } from '../../src/sim/index.js';
import { makeClient } from './helpers.js';

const perms = (entries: Record<string, Record<string, boolean>>): PermissionMap =>
  new Map(Object.entries(entries).map(([p, privs]) => [p, new Map(Object.entries(privs))]));

describe('the privileges pvegraph needs (src/proxmox/privileges.ts)', () => {
  it('VM.Audit on /vms and Sys.Audit on /, each with what it is for; VM.Allocate is not needed', () => {
    expect([...new Set(REQUIRED_PRIVILEGES.map(privilegeLabel))]).toEqual(['VM.Audit@/vms', 'Sys.Audit@/']);
    expect(requiredPrivilegeNames()).toEqual(['VM.Audit', 'Sys.Audit']);
    expect(requiredPaths()).toEqual(['/vms', '/']);
    const purposes = REQUIRED_PRIVILEGES.map((r) => r.purpose).join('\n');
    for (const word of ['guest listings', 'cluster status', 'cluster identity', 'cluster options', 'tasks'])
      expect(purposes).toContain(word);
    expect(REQUIRED_PRIVILEGES.some((r) => r.privilege === 'VM.Allocate')).toBe(false);
  });

  it("a path Proxmox reported is authoritative; an unreported one inherits its nearest reported parent's propagating privileges", () => {
    const p = perms({ '/': { 'Sys.Audit': true, 'VM.Audit': false }, '/vms/100': { 'VM.Audit': true } });
    expect(holds(p, 'Sys.Audit', '/')).toBe(true);
    expect(holds(p, 'Sys.Audit', '/vms')).toBe(true); // propagates from /
    expect(holds(p, 'VM.Audit', '/')).toBe(true); // held on / itself …
    expect(holds(p, 'VM.Audit', '/vms')).toBe(false); // … but not propagated
    expect(holds(p, 'VM.Audit', '/vms/100')).toBe(true);
    expect(holds(p, 'Sys.Audit', '/vms/100')).toBe(false); // the reported entry wins
    expect(holds(p, 'VM.Audit', '/vms/100/')).toBe(true); // same ACL path
    expect(holds(new Map(), 'Sys.Audit', '/')).toBe(false);
    // A reported path with nothing on it (a more specific ACL took everything away).
    expect(holds(perms({ '/': { 'VM.Audit': true }, '/vms': {} }), 'VM.Audit', '/vms')).toBe(false);
  });

  it('missingPrivileges: distinct Privilege@path in list order, empty when all are there', () => {
    expect(missingPrivileges(new Map())).toEqual(['VM.Audit@/vms', 'Sys.Audit@/']);
    expect(missingPrivileges(perms({ '/': { 'Sys.Audit': true, 'VM.Audit': true } }))).toEqual([]);
    expect(missingPrivileges(perms({ '/vms': { 'VM.Audit': true } }))).toEqual(['Sys.Audit@/']);
    expect(missingPrivileges(perms({ '/': { 'Sys.Audit': true } }))).toEqual(['VM.Audit@/vms']);
  });
});

describe('ProxmoxClient: token privileges (/access/permissions)', () => {
  let sim: Simulator;
  let client: ProxmoxClient;
  let n = 0;
  /** A target for a new simulator token holding exactly `privileges`. */
  const tokenWith = (privileges: SimGrants | 'all' | 'none') => {
    const id = `grant${++n}@pve!pvegraph`;
    const secret = `secret-${n}-0000-4000-8000-000000000000`;
    sim.addToken({ id, secret, privileges });
    return sim.target({ tokenId: id, tokenSecret: secret });
  };

  beforeAll(async () => {
    sim = await startSimulator({ guests: 4 });
  });
  afterAll(async () => {
    await sim.stop();
  });
  beforeEach(() => {
    client = makeClient();
    sim.clearFaults();
    sim.stats.reset();
  });
  afterEach(async () => {
    await client.close();
  });

  it('permissions(): path → privilege → propagates; with a path, the effective set there (inherited included, empty when none)', async () => {
    const t = tokenWith({ '/': ['Sys.Audit'], '/vms/100': ['VM.Audit'] });
    const all = await client.permissions(t);
    expect([...all.get('/')!.keys()]).toEqual(['Sys.Audit']);
    expect(all.get('/vms/100')).toEqual(
      new Map([
        ['Sys.Audit', true],
        ['VM.Audit', true],
      ]),
    );
    expect(await client.permissions(t, '/vms')).toEqual(new Map([['/vms', new Map([['Sys.Audit', true]])]]));
    const none = tokenWith('none');
    expect(await client.permissions(none, '/vms')).toEqual(new Map([['/vms', new Map()]]));
    expect(await client.permissions(none)).toEqual(new Map());
  });

  it('a token with every privilege: testConnection reports nothing missing', async () => {
    const r = await client.testConnection(sim.target());
    expect(r).toMatchObject({ ok: true, missingPrivileges: [] });
    expect(sim.stats.count('/access/permissions')).toBe(2); // one question per required path
    expect(await client.missingPrivileges(tokenWith('all'))).toEqual([]);
  });

  it("only VM.Audit on /vms: Sys.Audit@/ is missing — and testConnection's 403 on /cluster/status says so", async () => {
    const t = tokenWith({ '/vms': ['VM.Audit'] });
    expect(await client.missingPrivileges(t)).toEqual(['Sys.Audit@/']);
    const r = await client.testConnection(t);
    expect(r).toMatchObject({
      ok: false,
      errorCode: 'PROXMOX_FORBIDDEN',
      version: '8.4.1',
      missingPrivileges: ['Sys.Audit@/'],
    });
  });

  it('no privilege at all: both are missing', async () => {
    const t = tokenWith('none');
    expect(await client.missingPrivileges(t)).toEqual(['VM.Audit@/vms', 'Sys.Audit@/']);
    expect(await client.testConnection(t)).toMatchObject({
      ok: false,
      errorCode: 'PROXMOX_FORBIDDEN',
      missingPrivileges: ['VM.Audit@/vms', 'Sys.Audit@/'],
    });
  });

  it('grants on / cover /vms (propagation)', async () => {
    const t = tokenWith({ '/': ['Sys.Audit', 'VM.Audit'] });
    expect(await client.missingPrivileges(t)).toEqual([]);
    expect(await client.testConnection(t)).toMatchObject({ ok: true, missingPrivileges: [] });
  });

  it('Sys.Audit on / only: the test is ok and names VM.Audit@/vms', async () => {
    const t = tokenWith({ '/': ['Sys.Audit'] });
    expect(await client.testConnection(t)).toMatchObject({
      ok: true,
      clusterName: null,
      pveNodeNames: ['pve'],
      missingPrivileges: ['VM.Audit@/vms'],
    });
  });

  it('grants on a single guest do not count for /vms', async () => {
    const t = tokenWith({ '/': ['Sys.Audit'], '/vms/100': ['VM.Audit'] });
    expect(await client.missingPrivileges(t)).toEqual(['VM.Audit@/vms']);
  });

  it('/access/permissions failing (an older Proxmox): nothing reported missing, the test still ok', async () => {
    const t = tokenWith({ '/': ['Sys.Audit'] });
    sim.addFault({
      kind: 'status',
      status: 501,
      reason: "Method 'GET /access/permissions' not implemented",
      pathPrefix: '/access/permissions',
    });
    const r = await client.testConnection(t);
    expect(r).toMatchObject({ ok: true, errorCode: null, message: null, clusterName: null, missingPrivileges: [] });
    expect(r.version).toBe('8.4.1');
    await expect(client.missingPrivileges(t)).rejects.toMatchObject({ code: 'PROXMOX_ERROR' });
    sim.clearFaults();
    // Garbage instead of a permissions map: the same.
    sim.addFault({ kind: 'malformed', pathPrefix: '/access/permissions' });
    expect(await client.testConnection(t)).toMatchObject({ ok: true, missingPrivileges: [] });
  });

  it('a failed test other than a refusal reports nothing missing', async () => {
    const r = await client.testConnection(sim.target({ tokenSecret: 'wrong-secret' }));
    expect(r).toMatchObject({ ok: false, errorCode: 'PROXMOX_AUTH_FAILED', missingPrivileges: [] });
    expect(sim.stats.count('/access/permissions')).toBe(0);
  });
});
