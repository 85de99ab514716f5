import { GraphQLError } from 'graphql';

/**
 * The stable `extensions.code` values of the public contract (../shared/api-contract.md).
 * Clients switch on these, so they never change meaning.
 */
export const ErrorCode = {
  UNAUTHENTICATED: 'UNAUTHENTICATED',
  BAD_USER_INPUT: 'BAD_USER_INPUT',
  NOT_FOUND: 'NOT_FOUND',
  CONFLICT: 'CONFLICT',
  FAILED_PRECONDITION: 'FAILED_PRECONDITION',
  HOST_NOT_ALLOWED: 'HOST_NOT_ALLOWED',
  PROXMOX_UNREACHABLE: 'PROXMOX_UNREACHABLE',
  PROXMOX_TIMEOUT: 'PROXMOX_TIMEOUT',
  PROXMOX_AUTH_FAILED: 'PROXMOX_AUTH_FAILED',
  PROXMOX_FORBIDDEN: 'PROXMOX_FORBIDDEN',
  PROXMOX_TLS_UNTRUSTED: 'PROXMOX_TLS_UNTRUSTED',
  PROXMOX_TLS_FINGERPRINT_MISMATCH: 'PROXMOX_TLS_FINGERPRINT_MISMATCH',
  PROXMOX_ERROR: 'PROXMOX_ERROR',
  RATE_LIMITED: 'RATE_LIMITED',
  /** A shared dependency (Redis) is unreachable right now; retry later. */
  SERVICE_UNAVAILABLE: 'SERVICE_UNAVAILABLE',
  /** The HTTP request itself is malformed (not JSON, no query, wrong method, no CSRF header). */
  BAD_REQUEST: 'BAD_REQUEST',
  INTERNAL_SERVER_ERROR: 'INTERNAL_SERVER_ERROR',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/**
 * An error a client can act on. It is a GraphQLError so Yoga's masking lets it through
 * unchanged; anything else thrown by a resolver is masked as INTERNAL_SERVER_ERROR.
 */
export class DomainError extends GraphQLError {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, extensions: Record<string, unknown> = {}) {
    super(message, { extensions: { ...extensions, code } });
    this.name = 'DomainError';
    this.code = code;
  }
}

export class UnauthenticatedError extends DomainError {
  constructor(message = 'A valid API token is required (Authorization: Bearer <token>).') {
    super(ErrorCode.UNAUTHENTICATED, message, { http: { status: 401 } });
  }
}

/** `fields` maps a field path such as `input.port` to what is wrong with it. */
export class BadUserInputError extends DomainError {
  constructor(message: string, fields: Record<string, string>) {
    super(ErrorCode.BAD_USER_INPUT, message, { fields });
  }

  /**
   * One error for several failing fields, its message naming each field with its reason
   * (`Invalid input: input.port: must be at most 65535; input.tokenSecret: must be printable
   * ASCII.`): a person reading only the message knows what to fix; programs read `fields`.
   */
  static forFields(fields: Record<string, string>): BadUserInputError {
    const parts = Object.entries(fields).map(([field, reason]) => `${field}: ${reason.replace(/\.$/, '')}`);
    return new BadUserInputError(`Invalid input: ${parts.join('; ')}.`, fields);
  }
}

/** Used for missing ids and for ids owned by someone else alike, so ids leak nothing. */
export class NotFoundError extends DomainError {
  constructor(what: string, id: string) {
    super(ErrorCode.NOT_FOUND, `${what} ${id} was not found.`, { id });
  }
}

export class ConflictError extends DomainError {
  constructor(message: string, extensions: Record<string, unknown> = {}) {
    super(ErrorCode.CONFLICT, message, extensions);
  }
}

export class FailedPreconditionError extends DomainError {
  constructor(message: string, extensions: Record<string, unknown> = {}) {
    super(ErrorCode.FAILED_PRECONDITION, message, extensions);
  }
}
