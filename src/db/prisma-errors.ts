/** Prisma's codes for constraint violations, which services turn into CONFLICT and friends. */
function hasCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

/** A unique constraint or unique index refused the write. */
export const isUniqueViolation = (err: unknown): boolean => hasCode(err, 'P2002');

/** The row an update or delete addressed is gone (deleted meanwhile). */
export const isRecordNotFound = (err: unknown): boolean => hasCode(err, 'P2025');

/** A foreign key refused the write (a referenced row is missing, or a referencing row exists). */
export const isForeignKeyViolation = (err: unknown): boolean => hasCode(err, 'P2003');

/**
 * The database cannot be reached right now (down, restarting, pool exhausted): a condition
 * clients can wait out, unlike a bug. P1001 can't reach, P1002 timed out, P1008 operation
 * timed out, P1017 server closed the connection, P2024 no pool connection in time.
 */
export function isDatabaseUnavailable(err: unknown): boolean {
  if (['P1001', 'P1002', 'P1008', 'P1017', 'P2024'].some((code) => hasCode(err, code))) return true;
  // A connection that dies mid-query reaches us as the pg driver's own error, unwrapped:
  // socket errors, SQLSTATE class 08 (connection exception) and 57P01–57P03 (shutting down,
  // starting up).
  const code = (err as { code?: unknown } | null)?.code;
  if (
    typeof code === 'string' &&
    (/^(ECONNRESET|ECONNREFUSED|EPIPE|ETIMEDOUT)$/.test(code) || /^(08...|57P0[123])$/.test(code))
  )
    return true;
  const message = err instanceof Error ? err.message : '';
  return /^Connection terminated|^timeout exceeded when trying to connect|^Client has encountered a connection error/.test(
    message,
  );
}
