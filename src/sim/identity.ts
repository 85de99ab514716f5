import { createHash, randomBytes, X509Certificate } from 'node:crypto';

/**
 * Cluster members' identities: each member of a Proxmox cluster has its own `pve-ssl.pem`
 * (signed by the cluster CA), so each has its own SHA-256 fingerprint, which the cluster
 * filesystem publishes to every member — offline ones included.
 */

const FINGERPRINT = /^([0-9A-F]{2}:){31}[0-9A-F]{2}$/;

export function isFingerprint(s: string): boolean {
  return FINGERPRINT.test(s);
}

/** A fingerprint for a member whose certificate the simulator does not serve. */
export function randomFingerprint(): string {
  return [...randomBytes(32)].map((b) => b.toString(16).toUpperCase().padStart(2, '0')).join(':');
}

/** The documentation address (RFC 5737) the simulator gives the i-th member. */
export function memberIp(index: number): string {
  return `192.0.2.${10 + index}`;
}

/** One entry of GET /nodes/{node}/certificates/info. */
export interface CertificateInfo {
  filename: string;
  fingerprint: string;
  subject: string;
  issuer: string;
  notbefore: number;
  notafter: number;
  san: string[];
  'public-key-type': string;
  'public-key-bits': number;
  pem?: string;
}

/** `CN=a\nO=b` (Node) → `/CN=a/O=b` (openssl's one-line form, which Proxmox shows). */
function oneLineName(name: string): string {
  return name
    .split('\n')
    .filter((s) => s)
    .map((s) => `/${s}`)
    .join('');
}

/** `DNS:localhost, IP Address:127.0.0.1` → `['localhost', '127.0.0.1']`. */
function sanValues(san: string | undefined): string[] {
  if (!san) return [];
  return san.split(/,\s*/).map((e) => e.replace(/^[^:]+:/, ''));
}

/** Describes a certificate the simulator really serves. */
export function describeCertificate(pem: string, filename = 'pve-ssl.pem'): CertificateInfo {
  const x = new X509Certificate(pem);
  const key = x.publicKey;
  const details = key.asymmetricKeyDetails ?? {};
  const isEc = key.asymmetricKeyType === 'ec';
  return {
    filename,
    fingerprint: x.fingerprint256.toUpperCase(),
    subject: oneLineName(x.subject),
    issuer: oneLineName(x.issuer),
    notbefore: Math.floor(Date.parse(x.validFrom) / 1000),
    notafter: Math.floor(Date.parse(x.validTo) / 1000),
    san: sanValues(x.subjectAltName),
    // openssl names EC keys by their OID name, as Proxmox reports them.
    'public-key-type': isEc ? 'id-ecPublicKey' : (key.asymmetricKeyType ?? 'unknown'),
    'public-key-bits': isEc ? curveBits(details.namedCurve) : (details.modulusLength ?? 0),
    pem,
  };
}

function curveBits(curve: string | undefined): number {
  const m = /(\d{3})/.exec(curve ?? '');
  return m ? Number(m[1]) : 256;
}

/**
 * Describes a member's `pve-ssl.pem` that exists only as a fingerprint: the fields a node
 * certificate made by `pvecm updatecerts` has (RSA 2048, issued by the cluster CA).
 */
export function describeMemberCertificate(opts: {
  node: string;
  fingerprint: string;
  ip: string;
  caId: string;
  issuedAt: number;
}): CertificateInfo {
  return {
    filename: 'pve-ssl.pem',
    fingerprint: opts.fingerprint,
    subject: `/OU=PVE Cluster Node/O=Proxmox Virtual Environment/CN=${opts.node}.sim.invalid`,
    issuer: `/CN=Proxmox Virtual Environment/OU=${opts.caId}/O=PVE Cluster Manager CA`,
    notbefore: opts.issuedAt,
    notafter: opts.issuedAt + 2 * 365 * 86400,
    san: [
      '127.0.0.1',
      '0000:0000:0000:0000:0000:0000:0000:0001',
      'localhost',
      opts.node,
      `${opts.node}.sim.invalid`,
      opts.ip,
    ],
    'public-key-type': 'rsa',
    'public-key-bits': 2048,
  };
}

/** A member as corosync.conf lists it. */
export interface CorosyncMember {
  name: string;
  nodeid: number;
  ip: string;
  fingerprint: string;
}

/**
 * GET /cluster/config/join: corosync.conf's nodelist (values are strings, as pve-cluster
 * parses the file) with each member's fingerprint and address, its totem section and the
 * digest of the file.
 */
export function joinInfoAnswer(
  clusterName: string,
  members: readonly CorosyncMember[],
  preferredNode: string,
): Record<string, unknown> {
  const totem = {
    cluster_name: clusterName,
    config_version: String(members.length + 2),
    interface: { '0': { linknumber: '0' } },
    ip_version: 'ipv4-6',
    link_mode: 'passive',
    secauth: 'on',
    version: '2',
  };
  const nodelist = members.map((m) => ({
    name: m.name,
    nodeid: String(m.nodeid),
    pve_addr: m.ip,
    pve_fp: m.fingerprint,
    quorum_votes: '1',
    ring0_addr: m.ip,
  }));
  const digest = createHash('sha1')
    .update(JSON.stringify({ totem, nodes: nodelist.map(({ pve_fp: _fp, ...n }) => n) }))
    .digest('hex');
  return { nodelist, preferred_node: preferredNode, totem, config_digest: digest };
}
