import net from 'node:net';
import tls from 'node:tls';
import type { buildConnector } from 'undici';
import {
  ProxmoxTimeoutError,
  ProxmoxTlsFingerprintMismatchError,
  ProxmoxTlsUntrustedError,
  ProxmoxUnreachableError,
} from './errors.js';
import { bareHost, resolveAllowed, type HostPolicy, type ResolvedAddress } from './host-policy.js';

/** How the certificate of a node is checked. */
export type TlsMode =
  { kind: 'verify'; ca?: readonly string[] } | { kind: 'pinned'; fingerprint: string } | { kind: 'insecure' };

/**
 * Canonical SHA-256 fingerprint: upper-case hex pairs joined by colons. Accepts any case,
 * with colons, spaces, dashes or no separator. Returns null when it is not 32 bytes of hex.
 */
export function normalizeFingerprint(fp: string): string | null {
  const hex = fp
    .replace(/^sha256[:=\s]*/i, '')
    .replace(/[\s:-]/g, '')
    .toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) return null;
  return hex.match(/../g)!.join(':');
}

/** Case- and separator-insensitive comparison of two fingerprints. */
export function fingerprintsEqual(a: string, b: string): boolean {
  const na = normalizeFingerprint(a);
  return na !== null && na === normalizeFingerprint(b);
}

/** SHA-256 fingerprint (upper-case colon hex) of the leaf certificate a TLS socket got. */
export function peerFingerprint(socket: tls.TLSSocket): string | null {
  const cert = socket.getPeerCertificate();
  if (!cert || typeof cert.fingerprint256 !== 'string' || cert.fingerprint256 === '') return null;
  return normalizeFingerprint(cert.fingerprint256) ?? cert.fingerprint256;
}

const CONNECT_FALLBACK_CODES = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EADDRNOTAVAIL',
  'EAFNOSUPPORT',
]);

/** Maps a socket-level error into PROXMOX_UNREACHABLE (keeps DomainErrors as they are). */
export function networkError(err: unknown, host: string, port: number): Error {
  if (err instanceof Error && 'extensions' in err) return err; // already a DomainError
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  const msg = err instanceof Error ? err.message : String(err);
  const what =
    code === 'ECONNREFUSED'
      ? 'connection refused'
      : code === 'ECONNRESET'
        ? 'connection reset'
        : code === 'EHOSTUNREACH' || code === 'ENETUNREACH'
          ? 'no route to host'
          : code
            ? `${code}`
            : msg;
  return new ProxmoxUnreachableError(`Cannot reach Proxmox at ${host}:${port} (${what}).`, {
    host,
    port,
    ...(code ? { cause: code } : {}),
  });
}

export interface SecureConnectOptions {
  host: string;
  port: number;
  tls: TlsMode;
  policy: HostPolicy;
  timeoutMs: number;
  /** Called with the fingerprint of every certificate seen (accepted or not). */
  onFingerprint?: (fp: string) => void;
  signal?: AbortSignal;
}

function connectOnce(addr: ResolvedAddress, o: SecureConnectOptions, deadline: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const host = bareHost(o.host);
    const sni = net.isIP(host) === 0 ? host : undefined;
    const socket = tls.connect({
      host: addr.address,
      port: o.port,
      // SNI and certificate identity use the name the user configured, the TCP connection
      // goes to the address that passed the host policy.
      servername: sni,
      // We decide ourselves after the handshake, so we can report the fingerprint.
      rejectUnauthorized: false,
      checkServerIdentity: (_name, cert) => tls.checkServerIdentity(sni ?? addr.address, cert),
      ...(o.tls.kind === 'verify' && o.tls.ca ? { ca: [...tls.rootCertificates, ...o.tls.ca] } : {}),
      ALPNProtocols: ['http/1.1'],
    });
    let settled = false;
    const finish = (err: Error | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      o.signal?.removeEventListener('abort', onAbort);
      socket.removeListener('error', onError);
      if (err) {
        socket.destroy();
        reject(err);
      } else {
        resolve(socket);
      }
    };
    const onError = (err: Error) => finish(networkError(err, host, o.port));
    const onAbort = () => finish(new ProxmoxTimeoutError(o.timeoutMs));
    const timer = setTimeout(
      () => finish(new ProxmoxTimeoutError(o.timeoutMs, 'The TLS connection was not established')),
      Math.max(1, deadline - Date.now()),
    );
    timer.unref?.();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    socket.once('error', onError);
    socket.once('secureConnect', () => {
      const fp = peerFingerprint(socket);
      if (fp) o.onFingerprint?.(fp);
      if (!fp) {
        finish(new ProxmoxUnreachableError(`Proxmox at ${host}:${o.port} presented no certificate.`));
        return;
      }
      if (o.tls.kind === 'pinned') {
        if (!fingerprintsEqual(fp, o.tls.fingerprint)) {
          finish(
            new ProxmoxTlsFingerprintMismatchError(fp, normalizeFingerprint(o.tls.fingerprint) ?? o.tls.fingerprint),
          );
          return;
        }
      } else if (o.tls.kind === 'verify') {
        if (!socket.authorized) {
          const detail = String(socket.authorizationError ?? 'certificate verification failed');
          finish(new ProxmoxTlsUntrustedError(fp, detail));
          return;
        }
      }
      finish(null);
    });
  });
}

/**
 * Resolves the host, applies the host policy, opens a TLS connection to a checked address
 * and verifies the certificate according to the TLS mode. The socket is handed out only
 * after the verification, so no byte of a request (no token) is ever written to a host
 * that failed it.
 */
export async function secureConnect(o: SecureConnectOptions): Promise<tls.TLSSocket> {
  const deadline = Date.now() + o.timeoutMs;
  const addresses = await resolveAllowed(o.host, o.policy, o.port);
  let lastErr: unknown;
  for (const addr of addresses) {
    if (o.signal?.aborted) throw new ProxmoxTimeoutError(o.timeoutMs);
    try {
      return await connectOnce(addr, o, deadline);
    } catch (err) {
      lastErr = err;
      const cause = (err as { extensions?: { cause?: unknown } }).extensions?.cause;
      if (typeof cause === 'string' && CONNECT_FALLBACK_CODES.has(cause) && Date.now() < deadline) {
        continue; // try the next address of the name
      }
      throw err;
    }
  }
  throw lastErr;
}

/** An undici connector built on secureConnect (ignores the hostname undici passes). */
export function makeConnector(base: Omit<SecureConnectOptions, 'signal'>): buildConnector.connector {
  return (_opts, callback) => {
    secureConnect(base).then(
      (socket) => callback(null, socket),
      (err: Error) => callback(err, null),
    );
  };
}

export interface FingerprintProbeOptions extends HostPolicy {
  timeoutMs: number;
}

/**
 * Connects to host:port (host policy applies), reads the certificate the host presents and
 * returns its SHA-256 fingerprint (upper-case colon hex). Sends no HTTP request and no
 * credentials; accepts any certificate.
 */
export async function fetchCertificateFingerprint(
  host: string,
  port: number,
  opts: FingerprintProbeOptions,
): Promise<string> {
  let seen: string | null = null;
  const socket = await secureConnect({
    host,
    port,
    tls: { kind: 'insecure' },
    policy: opts,
    timeoutMs: opts.timeoutMs,
    onFingerprint: (fp) => {
      seen = fp;
    },
  });
  socket.end();
  socket.destroy();
  if (!seen) throw new ProxmoxUnreachableError(`Proxmox at ${host}:${port} presented no certificate.`);
  return seen;
}
