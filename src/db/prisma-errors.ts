/** Prisma's codes for constraint violations, which services turn into CONFLICT and friends. */
function hasCode(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

/** A unique constraint or unique index refused the write. */
export const isUniqueViolation = (err: unknown): boolean => hasCode(err, 'P2002');

/** A foreign key refused the write (a referenced row is missing, or a referencing row exists). */
export const isForeignKeyViolation = (err: unknown): boolean => hasCode(err, 'P2003');
