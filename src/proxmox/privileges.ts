/**
 * The Proxmox privileges pvegraph's API token needs, in one place: ConnectionTest.missingPrivileges
 * is checked against this list, and the README's `pveum role add PVEGraph` line names the same
 * privileges. Read from what Proxmox checks for the calls pvegraph makes (pve-manager's
 * PVE::API2::Cluster and PVE::API2::Nodes):
 *
 * - `GET /version`: any valid token.
 * - `GET /cluster/resources?type=vm` (and `/nodes/{node}/qemu|lxc`): any user, but only the
 *   guests the caller has `VM.Audit` on (`/vms/{vmid}`) are listed — a VMID cache built from
 *   a filtered listing misses guests, so pvegraph needs it on all of `/vms`.
 * - `GET /cluster/status`: `Sys.Audit` on `/` (refused otherwise; createNode needs it).
 * - `GET /nodes`: any user, but only the members the caller has `Sys.Audit` on
 *   (`/nodes/{node}`) are listed, with their certificate fingerprints (the cluster identity).
 *   `Sys.Audit` on `/` covers them (propagation).
 * - `GET /cluster/options`: `next-id` (the datacenter's VMID range) only with `Sys.Audit` on `/`.
 * - `GET /cluster/tasks`: the whole cluster's tasks only with `Sys.Audit` on `/` (otherwise the
 *   caller's own).
 * - `GET /cluster/nextid` (with or without `?vmid=`): `permissions => { user => 'all' }` —
 *   any authenticated user or token may call it, whatever its privileges, so `VM.Allocate` is
 *   not needed (pvegraph never creates guests itself).
 */

export interface RequiredPrivilege {
  /** A Proxmox privilege, e.g. `VM.Audit`. */
  privilege: string;
  /** The ACL path it is needed on; a grant on a parent path with propagation counts. */
  path: string;
  /** What pvegraph does with it (and what goes wrong without it). */
  purpose: string;
}

export const REQUIRED_PRIVILEGES: readonly RequiredPrivilege[] = [
  {
    privilege: 'VM.Audit',
    path: '/vms',
    purpose: 'guest listings (/cluster/resources): without it guests are missing from vmids, guests and nextFreeVmid',
  },
  {
    privilege: 'Sys.Audit',
    path: '/',
    purpose: 'cluster status (/cluster/status): cluster name and members; createNode fails without it',
  },
  {
    privilege: 'Sys.Audit',
    path: '/',
    purpose:
      "cluster identity (/nodes members' certificate fingerprints): without it the registration gets a VMID space of its own",
  },
  {
    privilege: 'Sys.Audit',
    path: '/',
    purpose: "cluster options (/cluster/options): the datacenter's next-id range",
  },
  {
    privilege: 'Sys.Audit',
    path: '/',
    purpose: "tasks (/cluster/tasks): the whole cluster's guest creations and removals, not only the token's own",
  },
];

/** `Privilege@path`, as ConnectionTest.missingPrivileges names it. */
export function privilegeLabel(p: Pick<RequiredPrivilege, 'privilege' | 'path'>): string {
  return `${p.privilege}@${p.path}`;
}

/** Every distinct privilege of the list, in order (what the PVEGraph role holds). */
export function requiredPrivilegeNames(required: readonly RequiredPrivilege[] = REQUIRED_PRIVILEGES): string[] {
  return [...new Set(required.map((r) => r.privilege))];
}

/** Every distinct path of the list, in order (what to ask /access/permissions about). */
export function requiredPaths(required: readonly RequiredPrivilege[] = REQUIRED_PRIVILEGES): string[] {
  return [...new Set(required.map((r) => normalizeAclPath(r.path)))];
}

/** `/vms/`, `//vms` and `/vms` name the same ACL path. */
export function normalizeAclPath(path: string): string {
  return `/${path
    .split('/')
    .filter((s) => s !== '')
    .join('/')}`;
}

function parentOf(path: string): string | null {
  if (path === '/') return null;
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

/**
 * Privileges held on paths, as `/access/permissions` reports them: per path, each privilege
 * with whether it propagates to sub-paths (Proxmox's 1/0).
 */
export type PermissionMap = ReadonlyMap<string, ReadonlyMap<string, boolean>>;

/**
 * Whether `privilege` is held on `path`. A path Proxmox reported is authoritative (its entry is
 * the effective set, inherited privileges included, and a more specific ACL can take some away);
 * for a path it did not report, the nearest reported parent's propagating privileges count.
 */
export function holds(perms: PermissionMap, privilege: string, path: string): boolean {
  const p = normalizeAclPath(path);
  const own = perms.get(p);
  if (own) return own.has(privilege);
  for (let parent = parentOf(p); parent !== null; parent = parentOf(parent)) {
    const inherited = perms.get(parent);
    if (inherited) return inherited.get(privilege) === true;
  }
  return false;
}

/** What of `required` the permissions lack, as distinct `Privilege@path`, in list order. */
export function missingPrivileges(
  perms: PermissionMap,
  required: readonly RequiredPrivilege[] = REQUIRED_PRIVILEGES,
): string[] {
  const out = new Set<string>();
  for (const r of required) {
    if (!holds(perms, r.privilege, r.path))
      out.add(privilegeLabel({ privilege: r.privilege, path: normalizeAclPath(r.path) }));
  }
  return [...out];
}
