import { Redis } from 'ioredis';
import { describe, expect, it } from 'vitest';
import { withDefinitionsUsed } from '../../src/vmids/lua-definitions.js';
import * as scripts from '../../src/vmids/redis-scripts.js';
import { TEST_REDIS_URL } from '../support/env.js';

const DEFINITIONS = `
local K = { a = KEYS[1],
  b = KEYS[2] }
-- The clock.
local function now_ms()
  return 1
end
local LIMIT, SPARE = 10, 20
-- Uses the clock and the limit.
local function until_ms()
  return now_ms() + LIMIT
end
local function unused()
  return K.b
end
local function named_in_a_string()
  return 0
end
`;

describe('a script keeps only the shared Lua definitions it uses', () => {
  it('keeps what the script mentions and what those mention, in their order, with their comments', () => {
    const lua = withDefinitionsUsed(DEFINITIONS, `${DEFINITIONS}return until_ms() + #K.a\n`);
    // Everything up to the first definition nobody mentions, then the script's own code.
    const kept = DEFINITIONS.slice(0, DEFINITIONS.indexOf('local function unused'));
    expect(lua).toBe(`${kept}return until_ms() + #K.a\n`);
  });

  it('a name in a comment keeps nothing; a name in a string keeps its definition', () => {
    const lua = withDefinitionsUsed(
      DEFINITIONS,
      `${DEFINITIONS}-- unused() is not called\nreturn 'named_in_a_string'\n`,
    );
    expect(lua).not.toContain('local function unused');
    expect(lua).toContain('local function named_in_a_string');
  });

  it('leaves a script that does not start with the definitions as it is, and refuses definitions it cannot split', () => {
    expect(withDefinitionsUsed(DEFINITIONS, 'return 1')).toBe('return 1');
    expect(() => withDefinitionsUsed('\nx = 1\n', '\nx = 1\nreturn x')).toThrow(/not a local declaration/);
  });

  it("the store's scripts keep what they call and leave out what they do not", () => {
    // RESERVE searches and announces; it never answers a fill's change or restores reservations.
    expect(scripts.RESERVE).toMatch(/local function next_free\(/);
    expect(scripts.RESERVE).toMatch(/local function bump\(/);
    expect(scripts.RESERVE).not.toMatch(/local function delta\(/);
    expect(scripts.RESERVE).not.toMatch(/local function index_reserved\(/);
    // STATE only reads the version hash after the common checks.
    expect(scripts.STATE).not.toMatch(/local function (bump|lapse|build_used)\(/);
  });

  it('every script of the store, plain and as sent to a Redis Cluster, compiles in Redis', async () => {
    // A definition split in the wrong place (a column-0 line inside a function) would leave a
    // kept part without its end: Redis refuses to load it.
    const redis = new Redis(TEST_REDIS_URL);
    try {
      const sources = Object.entries(scripts).filter(
        (entry): entry is [string, string] => typeof entry[1] === 'string' && entry[1].includes('redis.call'),
      );
      expect(sources.length).toBeGreaterThanOrEqual(14);
      for (const [name, lua] of sources) {
        for (const source of [lua, scripts.sharded(lua)]) {
          await expect(redis.script('LOAD', source), name).resolves.toMatch(/^[0-9a-f]{40}$/);
        }
      }
    } finally {
      redis.disconnect();
    }
  });
});
