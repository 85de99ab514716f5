import { BadUserInputError } from '../errors.js';
import { VMID_MAX, VMID_MIN } from './types.js';

/** Reservations are meant to bridge "picked an id" and "created the guest", not to park ids. */
export const RESERVATION_TTL_MIN_S = 1;
export const RESERVATION_TTL_MAX_S = 86_400;
export const DEFAULT_RESERVATION_TTL_S = 600;

function integerIn(field: string, value: number, min: number, max: number): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    const message = `must be an integer from ${min} to ${max}`;
    throw new BadUserInputError(`${field} ${message} (got ${String(value)}).`, { [field]: message });
  }
  return value;
}

export const checkVmid = (vmid: number, field = 'vmid') => integerIn(field, vmid, VMID_MIN, VMID_MAX);
export const checkMin = (min: number) => integerIn('min', min, VMID_MIN, VMID_MAX);
export const checkTtlSeconds = (ttlSeconds: number) =>
  integerIn('ttlSeconds', ttlSeconds, RESERVATION_TTL_MIN_S, RESERVATION_TTL_MAX_S);
