import { z } from 'zod';
import { isDnsName, parseHostName } from '../proxmox/host-name.js';
import { VMID_MAX, VMID_MIN } from '../vmids/types.js';

/**
 * Input rules for nodes and containers. Each schema normalises what it accepts (trimmed
 * names, lower-case hosts, upper-case colon fingerprints) so stored values have one form.
 */

export const nodeName = z
  .string()
  .trim()
  .min(1, 'must not be empty')
  .max(100, 'must be at most 100 characters')
  .refine((v) => !/\p{Cc}/u.test(v), 'must not contain control characters');

/** A host name or IP literal in its stored form (the rule: proxmox/host-name.ts); IPv6 without brackets. */
export const nodeHost = z.string().transform((v, ctx) => {
  const host = parseHostName(v);
  if (host) return host.host;
  ctx.addIssue({ code: 'custom', message: 'must be a hostname or an IP address (no scheme, port or path)' });
  return z.NEVER;
});

export const nodePort = z
  .number()
  .int('must be an integer')
  .min(1, 'must be from 1 to 65535')
  .max(65535, 'must be from 1 to 65535');

/** USER@REALM!TOKENID, as Proxmox names API tokens (token ids: letter, then [A-Za-z0-9._-]). */
export const tokenId = z
  .string()
  .trim()
  .max(200, 'must be at most 200 characters')
  .regex(/^[^\s@!=:]+@[A-Za-z0-9._-]+![A-Za-z][A-Za-z0-9._-]*$/, 'must look like USER@REALM!TOKENID');

/** Printable, no spaces: it travels in an HTTP header. */
export const tokenSecret = z
  .string()
  .min(1, 'must not be empty')
  .max(512, 'must be at most 512 characters')
  .regex(/^[\x21-\x7e]+$/, 'must be printable ASCII without spaces');

export const sshPassword = z.string().max(1024, 'must be at most 1024 characters');

/** SHA-256 fingerprint, colon-separated or bare hex, any case → `AB:CD:…` (95 chars). */
export const tlsFingerprint = z
  .string()
  .trim()
  .transform((v) => v.replace(/:/g, '').toUpperCase())
  .refine((v) => /^[0-9A-F]{64}$/.test(v), 'must be a SHA-256 fingerprint (32 bytes of hex, colon-separated)')
  .transform((v) => v.match(/../g)!.join(':'));

export const vmid = z
  .number()
  .int('must be an integer')
  .min(VMID_MIN, `must be from ${VMID_MIN} to ${VMID_MAX}`)
  .max(VMID_MAX, `must be from ${VMID_MIN} to ${VMID_MAX}`);

export const containerHostname = z
  .string()
  .trim()
  .refine((v) => v === '' || isDnsName(v), 'must be a valid hostname');

/** Fallback endpoints per registration (besides the primary). */
export const MAX_FALLBACK_ENDPOINTS = 8;

/** Ids are UUIDs; anything else cannot name a row and answers NOT_FOUND without a query. */
export function isUuid(id: string): boolean {
  return /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id);
}

/** For fields where an empty string means "keep" or "remove". */
export const emptyString = z.literal('');
