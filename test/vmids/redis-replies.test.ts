import { describe, expect, it } from 'vitest';
import * as replies from '../../src/vmids/redis-replies.js';

/** The scripts' replies as Redis hands them to ioredis: decoded when well-formed, refused by name otherwise. */
describe('Lua script replies', () => {
  it('decodes each script reply of the expected shape', () => {
    expect(replies.decodeReserve(['OK', 104, '1700000060000', '7'])).toEqual({
      status: 'reserved',
      vmid: 104,
      expiresAt: 1_700_000_060_000,
      version: 7,
    });
    expect(replies.decodeReserve(['RESERVED', 104])).toEqual({ status: 'already-reserved', vmid: 104 });
    expect(replies.decodeReserve(['EXHAUSTED'])).toEqual({ status: 'exhausted' });
    expect(replies.decodeNextFree(['FREE', 200])).toEqual({ status: 'free', vmid: 200 });
    expect(
      replies.decodeRead(['3', '1700000000000', '1700000060000', '1699999990000', '1700000050000', '100,101']),
    ).toEqual({
      version: 3,
      nowMs: 1_700_000_000_000,
      firstExpiry: 1_700_000_060_000,
      refreshedAt: 1_699_999_990_000,
      expiresAt: 1_700_000_050_000,
      taken: '100,101',
    });
    expect(replies.decodeRead(['0', '1700000000000', '', '', '', []])).toMatchObject({
      firstExpiry: null,
      refreshedAt: null,
      expiresAt: null,
      taken: [],
    });
    expect(replies.decodeRefresh(['STALE', '4'])).toEqual({ status: 'stale', version: 4 });
    expect(replies.decodeRefresh(['GONE'])).toEqual({ status: 'gone' });
    expect(replies.decodeRefresh(['OK', 1, '5', '1', '2', ''])).toEqual({
      status: 'ok',
      changed: true,
      version: 5,
      refreshedAt: 1,
      expiresAt: 2,
      firstExpiry: null,
    });
    expect(replies.decodeVmids('read', ['110', '104', '2000'])).toEqual([104, 110, 2000]);
    expect(replies.decodeTime(['1700000000', '123456'])).toBe(1_700_000_000_123);
    expect(replies.decodeInvalidate([-1, 9])).toEqual({ existed: -1, version: 9 });
    expect(replies.decodeConsume([1, 0])).toEqual({ released: true, added: false });
    expect(replies.decodeExpireDue(['1000', ''])).toEqual({ nowMs: 1000, nextMs: null });
    expect(replies.decodeEventsAfter(['12', ['{"a":1}']])).toEqual({ version: 12, messages: ['{"a":1}'] });
    expect(replies.decodeInteger('release', 1)).toBe(1);
  });

  it.each([
    ['reserve', () => replies.decodeReserve(['OK', 104])],
    ['reserve', () => replies.decodeReserve(['MAYBE', 104])],
    ['reserve', () => replies.decodeReserve(null)],
    ['next-free', () => replies.decodeNextFree(['FREE', 'abc'])],
    ['read', () => replies.decodeRead(['3', '1', 'not a time', '', '', []])],
    ['read', () => replies.decodeVmids('read', '104,110')],
    ['time', () => replies.decodeTime(['1700000000'])],
    ['refresh', () => replies.decodeRefresh(['OK', 1, '5', '1', '2'])],
    ['invalidate', () => replies.decodeInvalidate([2, 1])],
    ['consume', () => replies.decodeConsume(1)],
    ['expire-due', () => replies.decodeExpireDue(['x', ''])],
    ['events-after', () => replies.decodeEventsAfter(['1', [1, 2]])],
    ['release', () => replies.decodeInteger('release', '1')],
  ] as const)('refuses a %s reply of another shape, naming the script and what came', (script, decode) => {
    expect(decode).toThrow(replies.ScriptReplyError);
    expect(decode).toThrow(new RegExp(`unexpected reply of the ${script} script: expected .+, got `));
  });
});
