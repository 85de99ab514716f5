import { createHash } from 'node:crypto';
import type { ClusterIdentity } from '../proxmox/index.js';

export type { ClusterIdentity };

/**
 * The id of a cluster seen for the first time: a digest of its name and its members'
 * fingerprints. Registrations that arrive later join it by any shared fingerprint (members
 * come and go), so this is computed once per cluster and then kept.
 */
export function deriveClusterId(identity: ClusterIdentity): string {
  const digest = createHash('sha256')
    .update(`pve-cluster\n${identity.clusterName ?? ''}\n${identity.memberFingerprints.join('\n')}`)
    .digest('hex');
  return `pve-${digest.slice(0, 32)}`;
}

/**
 * The VMID space of a registration: its cluster's, or, when the cluster is not known, one of
 * its own under the registration's id (a UUID: never equal to a cluster id).
 */
export function vmidSpaceOf(registration: { id: string; clusterId: string | null }): string {
  return registration.clusterId ?? registration.id;
}
