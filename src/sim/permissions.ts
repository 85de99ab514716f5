/**
 * Token privileges of the simulator, checked the way Proxmox evaluates ACLs: a privilege
 * granted on a path applies to that path and everything below it (the simulator treats
 * every grant as propagating, as the GUI's default does).
 */

/** Privileges granted per ACL path, e.g. `{ '/vms/100': ['VM.Audit'] }`. */
export type SimGrants = Record<string, string[]>;

/**
 * 'all': every privilege on `/` (root@pam). 'none': authenticates (GET /version works) but
 * holds no privilege. A map: exactly these grants.
 */
export type SimPrivileges = 'all' | 'none' | SimGrants;

/** The privileges a PVE 8 Administrator role holds. */
export const ALL_PRIVILEGES: readonly string[] = [
  'Datastore.Allocate',
  'Datastore.AllocateSpace',
  'Datastore.AllocateTemplate',
  'Datastore.Audit',
  'Group.Allocate',
  'Mapping.Audit',
  'Mapping.Modify',
  'Mapping.Use',
  'Permissions.Modify',
  'Pool.Allocate',
  'Pool.Audit',
  'Realm.Allocate',
  'Realm.AllocateUser',
  'SDN.Allocate',
  'SDN.Audit',
  'SDN.Use',
  'Sys.AccessNetwork',
  'Sys.Audit',
  'Sys.Console',
  'Sys.Incoming',
  'Sys.Modify',
  'Sys.PowerMgmt',
  'Sys.Syslog',
  'User.Modify',
  'VM.Allocate',
  'VM.Audit',
  'VM.Backup',
  'VM.Clone',
  'VM.Config.CDROM',
  'VM.Config.CPU',
  'VM.Config.Cloudinit',
  'VM.Config.Disk',
  'VM.Config.HWType',
  'VM.Config.Memory',
  'VM.Config.Network',
  'VM.Config.Options',
  'VM.Console',
  'VM.Migrate',
  'VM.Monitor',
  'VM.PowerMgmt',
  'VM.Snapshot',
  'VM.Snapshot.Rollback',
];

/** The paths GET /access/permissions reports without `?path=` (besides the granted ones). */
const TOP_LEVEL_PATHS = ['/', '/access', '/access/groups', '/nodes', '/pool', '/sdn', '/storage', '/vms'];

export function isGrantMap(p: SimPrivileges | undefined): p is SimGrants {
  return typeof p === 'object' && p !== null;
}

/** `/vms/100/` and `//vms//100` name the same ACL path as `/vms/100`. */
export function normalizeAclPath(path: string): string {
  const parts = path.split('/').filter((s) => s !== '');
  return `/${parts.join('/')}`;
}

/** `/vms` covers `/vms/100`, `/` covers everything; `/vm` does not cover `/vms`. */
function covers(grantPath: string, path: string): boolean {
  return grantPath === '/' || path === grantPath || path.startsWith(`${grantPath}/`);
}

/** Every privilege the holder has on `path`, including those inherited from parents. */
export function effectivePrivileges(privileges: SimPrivileges | undefined, path: string): Set<string> {
  if (privileges === undefined || privileges === 'all') return new Set(ALL_PRIVILEGES);
  if (privileges === 'none') return new Set();
  const target = normalizeAclPath(path);
  const out = new Set<string>();
  for (const [grantPath, privs] of Object.entries(privileges)) {
    if (covers(normalizeAclPath(grantPath), target)) for (const p of privs) out.add(p);
  }
  return out;
}

export function hasPrivilege(privileges: SimPrivileges | undefined, path: string, priv: string): boolean {
  return effectivePrivileges(privileges, path).has(priv);
}

/**
 * The answer of GET /access/permissions: path → { privilege: 1 }. With `path`, only that
 * path; otherwise the top-level paths and every granted path. Paths without any privilege
 * are left out, so a token without rights gets `{}`.
 */
export function permissionsAnswer(
  privileges: SimPrivileges | undefined,
  path?: string,
): Record<string, Record<string, 1>> {
  const paths =
    path !== undefined
      ? [normalizeAclPath(path)]
      : [
          ...new Set([
            ...TOP_LEVEL_PATHS,
            ...(isGrantMap(privileges) ? Object.keys(privileges).map(normalizeAclPath) : []),
          ]),
        ];
  const out: Record<string, Record<string, 1>> = {};
  for (const p of paths) {
    const privs = [...effectivePrivileges(privileges, p)].sort();
    if (privs.length > 0) out[p] = Object.fromEntries(privs.map((x) => [x, 1 as const]));
  }
  return out;
}
