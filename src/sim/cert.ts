import { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { generate } from 'selfsigned';

export interface SimCertificate {
  /** PEM private key */
  key: string;
  /** PEM certificate */
  cert: string;
  /** SHA-256, upper-case colon hex */
  fingerprint: string;
}

/** SHA-256 fingerprint (upper-case colon hex) of a PEM certificate. */
export function pemFingerprint(certPem: string): string {
  return new X509Certificate(certPem).fingerprint256.toUpperCase();
}

type AltName = { type: 2; value: string } | { type: 7; ip: string };

function altNames(hosts: readonly string[], includeLocal = true): AltName[] {
  const out: AltName[] = [];
  const seen = new Set<string>();
  for (const h of [...(includeLocal ? ['localhost', '127.0.0.1', '::1'] : []), ...hosts]) {
    const bare = h.replace(/^\[|\]$/g, '');
    if (!bare || seen.has(bare) || bare === '0.0.0.0' || bare === '::') continue;
    seen.add(bare);
    out.push(isIP(bare) ? { type: 7, ip: bare } : { type: 2, value: bare });
  }
  return out;
}

/**
 * A fresh self-signed certificate, like the `pve-ssl.pem` of a node that has no custom
 * certificate: untrusted by default, valid for localhost, 127.0.0.1, ::1 and `hosts`.
 */
export async function generateSelfSigned(commonName: string, hosts: readonly string[] = []): Promise<SimCertificate> {
  const pems = await generate([{ name: 'commonName', value: commonName }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: altNames([commonName, ...hosts]) },
    ],
  });
  return { key: pems.private, cert: pems.cert, fingerprint: pemFingerprint(pems.cert) };
}

/**
 * A CA and a server certificate signed by it (for tests of the verified TLS mode, as with a
 * cluster CA that the client was told to trust).
 */
export async function generateCaSigned(
  commonName: string,
  hosts: readonly string[] = [],
  /** Also valid for localhost, 127.0.0.1 and ::1. */
  includeLocal = true,
): Promise<{ ca: SimCertificate; server: SimCertificate }> {
  const ca = await generate([{ name: 'commonName', value: 'Simulated Proxmox Virtual Environment CA' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    ],
  });
  const server = await generate([{ name: 'commonName', value: commonName }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    ca: { key: ca.private, cert: ca.cert },
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: altNames([commonName, ...hosts], includeLocal) },
    ],
  });
  return {
    ca: { key: ca.private, cert: ca.cert, fingerprint: pemFingerprint(ca.cert) },
    server: { key: server.private, cert: server.cert, fingerprint: pemFingerprint(server.cert) },
  };
}
