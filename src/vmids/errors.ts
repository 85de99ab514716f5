import { DomainError, ErrorCode } from '../errors.js';

/**
 * The shared cache (Redis) cannot be reached. Clients can act on it (retry later), so it is a
 * DomainError with its own code rather than a masked INTERNAL_SERVER_ERROR.
 */
export const SERVICE_UNAVAILABLE = ErrorCode.SERVICE_UNAVAILABLE;

export class CacheUnavailableError extends DomainError {
  constructor(
    message = 'The VMID cache is unavailable (Redis cannot be reached); try again shortly.',
    cause?: unknown,
  ) {
    super(SERVICE_UNAVAILABLE, message);
    this.name = 'CacheUnavailableError';
    if (cause !== undefined) (this as { cause?: unknown }).cause = cause;
  }
}
