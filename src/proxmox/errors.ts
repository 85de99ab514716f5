import { DomainError, ErrorCode } from '../errors.js';

/**
 * Errors raised by the Proxmox client. All of them are DomainErrors with one of the
 * public `extensions.code` values, so resolvers can let them through unchanged.
 */

export class HostNotAllowedError extends DomainError {
  constructor(host: string, reason: string, address?: string) {
    super(
      ErrorCode.HOST_NOT_ALLOWED,
      address && address !== host
        ? `Host "${host}" resolves to ${address}, which is not allowed: ${reason}.`
        : `Host "${host}" is not allowed: ${reason}.`,
      address ? { host, address } : { host },
    );
    this.name = 'HostNotAllowedError';
  }
}

export class ProxmoxUnreachableError extends DomainError {
  constructor(message: string, extensions: Record<string, unknown> = {}) {
    super(ErrorCode.PROXMOX_UNREACHABLE, message, extensions);
    this.name = 'ProxmoxUnreachableError';
  }
}

export class ProxmoxTimeoutError extends DomainError {
  constructor(timeoutMs: number, what = 'Proxmox did not answer') {
    super(ErrorCode.PROXMOX_TIMEOUT, `${what} within ${timeoutMs} ms.`, { timeoutMs });
    this.name = 'ProxmoxTimeoutError';
  }
}

export class ProxmoxAuthFailedError extends DomainError {
  constructor(reason: string) {
    super(ErrorCode.PROXMOX_AUTH_FAILED, `Proxmox rejected the API token (401${reason ? ` ${reason}` : ''}).`, {
      status: 401,
    });
    this.name = 'ProxmoxAuthFailedError';
  }
}

export class ProxmoxForbiddenError extends DomainError {
  constructor(reason: string, path: string) {
    super(
      ErrorCode.PROXMOX_FORBIDDEN,
      `The API token lacks the permission for ${path} (403${reason ? ` ${reason}` : ''}).`,
      { status: 403, path },
    );
    this.name = 'ProxmoxForbiddenError';
  }
}

export class ProxmoxTlsUntrustedError extends DomainError {
  readonly fingerprint: string;
  constructor(fingerprint: string, detail: string) {
    super(
      ErrorCode.PROXMOX_TLS_UNTRUSTED,
      `The certificate presented by the host is not trusted (${detail}). ` +
        `Pin its SHA-256 fingerprint ${fingerprint} if you trust it.`,
      { fingerprint, detail },
    );
    this.name = 'ProxmoxTlsUntrustedError';
    this.fingerprint = fingerprint;
  }
}

export class ProxmoxTlsFingerprintMismatchError extends DomainError {
  readonly fingerprint: string;
  constructor(fingerprint: string, expected: string) {
    super(
      ErrorCode.PROXMOX_TLS_FINGERPRINT_MISMATCH,
      `The host presented a certificate with SHA-256 fingerprint ${fingerprint}, ` +
        `not the pinned ${expected}. Update the pinned fingerprint if the certificate was renewed.`,
      { fingerprint, expected },
    );
    this.name = 'ProxmoxTlsFingerprintMismatchError';
    this.fingerprint = fingerprint;
  }
}

/** PROXMOX_ERROR: Proxmox answered, but with an error or with something we cannot use. */
export class ProxmoxApiError extends DomainError {
  readonly status: number | null;
  constructor(message: string, status: number | null, extensions: Record<string, unknown> = {}) {
    super(ErrorCode.PROXMOX_ERROR, message, status === null ? extensions : { ...extensions, status });
    this.name = 'ProxmoxApiError';
    this.status = status;
  }
}
