/**
 * The replies of the Lua scripts (redis-scripts.ts), decoded and checked instead of cast: a
 * reply of another shape (a script of another version during a rolling upgrade, a bug) fails
 * with an error naming the script and what it got, not with NaN or undefined further on.
 *
 * Redis turns Lua numbers into integers and Lua strings into bulk strings; the scripts send
 * big numbers (milliseconds, versions) as strings (`int()`), so numbers are read from either.
 */

export class ScriptReplyError extends Error {
  constructor(script: string, expected: string, reply: unknown) {
    super(`unexpected reply of the ${script} script: expected ${expected}, got ${preview(reply)}`);
    this.name = 'ScriptReplyError';
  }
}

function preview(reply: unknown): string {
  const text = JSON.stringify(reply) ?? String(reply);
  return text.length > 200 ? `${text.slice(0, 200)}…` : text;
}

type Decoder<T> = (value: unknown) => T | undefined;

const num: Decoder<number> = (v) => {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string' && v !== '' && Number.isFinite(Number(v))) return Number(v);
  return undefined;
};
const str: Decoder<string> = (v) => (typeof v === 'string' ? v : undefined);
const strings: Decoder<string[]> = (v) => (Array.isArray(v) && v.every((s) => typeof s === 'string') ? v : undefined);
/** '' (none) or a number. */
const optionalNum: Decoder<number | null> = (v) => (v === '' ? null : num(v));

/** An array reply whose elements decode one by one; undefined when any does not. */
function tuple<const D extends readonly Decoder<unknown>[]>(
  value: unknown,
  decoders: D,
): { [K in keyof D]: D[K] extends Decoder<infer T> ? T : never } | undefined {
  if (!Array.isArray(value) || value.length !== decoders.length) return undefined;
  const out: unknown[] = [];
  for (let i = 0; i < decoders.length; i++) {
    const d = decoders[i]!(value[i]);
    if (d === undefined) return undefined;
    out.push(d);
  }
  return out as { [K in keyof D]: D[K] extends Decoder<infer T> ? T : never };
}

function must<T>(script: string, expected: string, reply: unknown, decoded: T | undefined): T {
  if (decoded === undefined) throw new ScriptReplyError(script, expected, reply);
  return decoded;
}

/** A script answering one integer (RELEASE, UNLOCK, FORGET, SEED, REVIVE, SETTLE_REFUSED). */
export function decodeInteger(script: string, reply: unknown): number {
  return must(script, 'an integer', reply, typeof reply === 'number' && Number.isInteger(reply) ? reply : undefined);
}

/** READ: version, Redis's now, the first reservation's expiry|'', refreshedAt|'', expiresAt|'', taken (a list string or members). */
export interface ReadReply {
  version: number;
  nowMs: number;
  firstExpiry: number | null;
  refreshedAt: number | null;
  expiresAt: number | null;
  taken: string | string[];
}
export function decodeRead(reply: unknown): ReadReply {
  const takenOf: Decoder<string | string[]> = (v) => str(v) ?? strings(v);
  const t = must(
    'read',
    '[version, now, firstExpiry, refreshedAt, expiresAt, taken]',
    reply,
    tuple(reply, [num, num, optionalNum, optionalNum, optionalNum, takenOf]),
  );
  return { version: t[0], nowMs: t[1], firstExpiry: t[2], refreshedAt: t[3], expiresAt: t[4], taken: t[5] };
}

/** TIME ([seconds, microseconds]) in milliseconds, as the scripts' now_ms. */
export function decodeTime(reply: unknown): number {
  const [seconds, micros] = must('time', '[seconds, microseconds]', reply, tuple(reply, [num, num]));
  return seconds * 1000 + Math.floor(micros / 1000);
}

/** A plain ZRANGE of the reservations (after READ or REFRESH): their VMIDs, ascending. */
export function decodeVmids(script: string, reply: unknown): number[] {
  const members = must(script, "the reservations' VMIDs", reply, strings(reply));
  return members.map(Number).sort((a, b) => a - b);
}

export type RefreshReply =
  | { status: 'stale'; version: number }
  | { status: 'gone' }
  | {
      status: 'ok';
      changed: boolean;
      version: number;
      refreshedAt: number;
      expiresAt: number;
      firstExpiry: number | null;
    };
export function decodeRefresh(reply: unknown): RefreshReply {
  const expected = "['OK', changed, version, refreshedAt, expiresAt, firstExpiry] | ['STALE', version] | ['GONE']";
  const head: unknown = Array.isArray(reply) ? reply[0] : undefined;
  if (head === 'GONE' && (reply as unknown[]).length === 1) return { status: 'gone' };
  if (head === 'STALE') {
    const [, version] = must('refresh', expected, reply, tuple(reply, [str, num]));
    return { status: 'stale', version };
  }
  const [, changed, version, refreshedAt, expiresAt, firstExpiry] = must(
    'refresh',
    expected,
    reply,
    tuple(reply, [literal('OK'), num, num, num, num, optionalNum]),
  );
  return { status: 'ok', changed: changed === 1, version, refreshedAt, expiresAt, firstExpiry };
}

/** REFRESH_DELTA's answer that it did nothing: the set goes to REFRESH. */
export function isFullRefresh(reply: unknown): boolean {
  return Array.isArray(reply) && reply.length === 1 && reply[0] === 'FULL';
}

function literal<const L extends string>(value: L): Decoder<L> {
  return (v) => (v === value ? value : undefined);
}

/** INVALIDATE: existed (1, 0, or -1: the space is deleted), version. */
export function decodeInvalidate(reply: unknown): { existed: -1 | 0 | 1; version: number } {
  const [existed, version] = must('invalidate', '[existed, version]', reply, tuple(reply, [num, num]));
  if (existed !== -1 && existed !== 0 && existed !== 1)
    throw new ScriptReplyError('invalidate', 'existed of -1, 0 or 1', reply);
  return { existed, version };
}

export type ReserveReply =
  | { status: 'reserved'; vmid: number; expiresAt: number; version: number }
  | { status: 'miss' }
  | { status: 'taken'; vmid: number }
  | { status: 'already-reserved'; vmid: number }
  | { status: 'exhausted' };
export function decodeReserve(reply: unknown): ReserveReply {
  const expected = "['OK', vmid, expiresAt, version] | ['TAKEN'|'RESERVED', vmid] | ['MISS'] | ['EXHAUSTED']";
  switch (Array.isArray(reply) ? reply[0] : undefined) {
    case 'OK': {
      const [, vmid, expiresAt, version] = must('reserve', expected, reply, tuple(reply, [str, num, num, num]));
      return { status: 'reserved', vmid, expiresAt, version };
    }
    case 'TAKEN':
      return { status: 'taken', vmid: must('reserve', expected, reply, tuple(reply, [str, num]))[1] };
    case 'RESERVED':
      return { status: 'already-reserved', vmid: must('reserve', expected, reply, tuple(reply, [str, num]))[1] };
    case 'MISS':
      must('reserve', expected, reply, tuple(reply, [str]));
      return { status: 'miss' };
    case 'EXHAUSTED':
      must('reserve', expected, reply, tuple(reply, [str]));
      return { status: 'exhausted' };
    default:
      throw new ScriptReplyError('reserve', expected, reply);
  }
}

/** RESERVE: ['MISS'] for the whole batch, or one reply per request (decodeReserve's shapes). */
export function decodeReserveMany(reply: unknown, requests: number): ReserveReply[] {
  if (Array.isArray(reply) && reply.length === 1 && reply[0] === 'MISS') {
    return Array.from({ length: requests }, () => ({ status: 'miss' }) as const);
  }
  if (!Array.isArray(reply) || reply.length !== requests) {
    throw new ScriptReplyError('reserve', `['MISS'] or ${requests} replies`, reply);
  }
  return reply.map((one) => {
    const decoded = decodeReserve(one);
    if (decoded.status === 'miss') throw new ScriptReplyError('reserve', 'no MISS among replies', reply);
    return decoded;
  });
}

export type NextFreeReply = { status: 'free'; vmid: number } | { status: 'miss' } | { status: 'exhausted' };
export function decodeNextFree(reply: unknown): NextFreeReply {
  const expected = "['FREE', vmid] | ['MISS'] | ['EXHAUSTED']";
  switch (Array.isArray(reply) ? reply[0] : undefined) {
    case 'FREE':
      return { status: 'free', vmid: must('next-free', expected, reply, tuple(reply, [str, num]))[1] };
    case 'MISS':
      must('next-free', expected, reply, tuple(reply, [str]));
      return { status: 'miss' };
    case 'EXHAUSTED':
      must('next-free', expected, reply, tuple(reply, [str]));
      return { status: 'exhausted' };
    default:
      throw new ScriptReplyError('next-free', expected, reply);
  }
}

/** CONSUME: released, added (each 0 or 1). */
export function decodeConsume(reply: unknown): { released: boolean; added: boolean } {
  const [released, added] = must('consume', '[released, added]', reply, tuple(reply, [num, num]));
  return { released: released === 1, added: added === 1 };
}

/** EXPIRE_DUE: Redis's now, the next lapse ('' when none). */
export function decodeExpireDue(reply: unknown): { nowMs: number; nextMs: number | null } {
  const [nowMs, nextMs] = must('expire-due', "[now, next|'']", reply, tuple(reply, [num, optionalNum]));
  return { nowMs, nextMs };
}

/** EVENTS_AFTER: the current version, the logged events after the given one (as published). */
export function decodeEventsAfter(reply: unknown): { version: number; messages: string[] } {
  const [version, messages] = must('events-after', '[version, events]', reply, tuple(reply, [num, strings]));
  return { version, messages };
}

/** A hash field read in a script: its value, or null when the field is absent. */
const field: Decoder<string | null> = (v) => (v === null ? null : str(v));

/** STATE: version, epoch, deleted (absent fields as nil). */
export function decodeState(reply: unknown): [version: number, epoch: number, deleted: boolean] {
  const [version, epoch, deleted] = must(
    'state',
    '[version, epoch, deleted]',
    reply,
    tuple(reply, [field, field, field]),
  );
  return [Number(version ?? 0), Number(epoch ?? 0), deleted === '1'];
}
