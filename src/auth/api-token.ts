import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * API tokens look like `pvg_<43 base64url chars>` (256 random bits). The prefix makes them
 * recognisable to secret scanners and people; only their SHA-256 is stored — a slow hash adds
 * nothing for 256-bit random secrets and would cost every cache miss.
 */
export const TOKEN_PREFIX = 'pvg_';
const TOKEN_PATTERN = /^pvg_[A-Za-z0-9_-]{43}$/;

export function generateToken(): string {
  return TOKEN_PREFIX + randomBytes(32).toString('base64url');
}

export function isWellFormedToken(token: string): boolean {
  return TOKEN_PATTERN.test(token);
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

/** What a person sees in listings: enough to tell tokens apart, useless to an attacker. */
export function displayPrefix(token: string): string {
  return token.slice(0, TOKEN_PREFIX.length + 6);
}

/** Constant-time comparison of two secrets (hashed first, so lengths leak nothing either). */
export function sameSecret(a: string, b: string): boolean {
  return timingSafeEqual(createHash('sha256').update(a).digest(), createHash('sha256').update(b).digest());
}

/** `Authorization: Bearer <token>` → token, or null when the header is absent or malformed. */
export function bearerToken(header: string | null | undefined): string | null {
  if (!header) return null;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1]! : null;
}
