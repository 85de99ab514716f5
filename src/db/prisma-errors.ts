/** Prisma's codes for constraint violations, which services turn into CONFLICT and friends. */
function hasCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

/** A unique constraint or unique index refused the write. */
export const isUniqueViolation = (err: unknown): boolean => hasCode(err, 'P2002');

/** A foreign key refused the write (a referenced row is missing, or a referencing row exists). */
export const isForeignKeyViolation = (err: unknown): boolean => hasCode(err, 'P2003');

/**
 * The database cannot be reached right now (down, restarting, pool exhausted): a condition
 * clients can wait out, unlike a bug. P1001 can't reach, P1002 timed out, P1008 operation
 * timed out, P1017 server closed the connection, P2024 no pool connection in time.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  return ['P1001', 'P1002', 'P1008', 'P1017', 'P2024'].some((code) => hasCode(err, code));
}
