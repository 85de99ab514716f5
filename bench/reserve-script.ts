/**
 * What one RESERVE script costs Redis on its own: `npm run bench:script` (REDIS_URL, default
 * redis://127.0.0.1:6379; run it on an idle Redis, the figures are Redis's own command time).
 * For 100 guests (with no and with 500 reservations) and for 10,000 guests + 10,000
 * reservations (every other VMID above the guests, as scenario 5 seeds them), it first fills
 * the space again, with the same set, with one guest created and one destroyed, and after the
 * cache expired with one more created (REFRESH or REFRESH_DELTA and a ZRANGE in one MULTI:
 * EXEC's time), reads it from Redis (the
 * READ script and a ZRANGE in one MULTI), then reserves
 * in batches of 1 and of 8 (one RESERVE script each), and prints Redis's time per read and per
 * script (INFO commandstats, before and after) and the commands a script called. Keys live
 * under a prefix of their own, deleted after.
 *
 * Times move with the machine; instruction counts do not. With CALLGRIND_PID set to a Redis
 * run under callgrind (`valgrind --tool=callgrind --instr-atstart=no redis-server --port 6391
 * --save ''`, then `REDIS_URL=redis://127.0.0.1:6391 CALLGRIND_PID=<its pid>`), the reserving
 * loops also print Redis's instructions per script, Lua's garbage collection included (its
 * step after every 50th script is part of that script's cost).
 */
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { Redis } from 'ioredis';
import { RedisVmidStore } from '../src/vmids/redis-store.js';
import type { ReserveRequest } from '../src/vmids/store.js';
import { deleteKeysWithPrefix } from '../test/support/redis-keys.js';

const URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const SCRIPTS = 2_000;
const READS = 200;
const OWNER = 'bench';

type Stats = Map<string, { calls: number; usec: number }>;

async function commandStats(redis: Redis): Promise<Stats> {
  const stats: Stats = new Map();
  for (const line of (await redis.info('commandstats')).split('\n')) {
    const m = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line);
    if (m) stats.set(m[1]!, { calls: Number(m[2]), usec: Number(m[3]) });
  }
  return stats;
}

const CALLGRIND_PID = process.env.CALLGRIND_PID;
const callgrind = (...args: string[]) =>
  execFileSync('callgrind_control', [...args, CALLGRIND_PID!], { encoding: 'utf8' });
/** Redis's instructions since the last call (callgrind_control -e: the totals of its threads). */
function instructionsSinceZero(): number {
  const totals = callgrind('-e');
  return [...totals.matchAll(/Th \d+\s+([\d,]+)/g)].reduce((n, m) => n + Number(m[1]!.replaceAll(',', '')), 0);
}

const search = (): ReserveRequest => ({ vmid: null, min: 100, max: 999_999_999, ttlSeconds: 3_600, owner: OWNER });

async function measure(guests: number, reserved: number, batch: number): Promise<void> {
  const prefix = `pvgscript_${randomUUID().slice(0, 8)}:`;
  const redis = new Redis(URL, { keyPrefix: prefix });
  const admin = new Redis(URL);
  const store = new RedisVmidStore(redis, { reuseHoldMs: 60_000 });
  const node = { id: 'space', userId: OWNER, spaceId: 'space' };
  try {
    await store.refresh(
      node,
      Array.from({ length: guests }, (_, i) => 100 + i),
      3_600,
      null,
    );
    for (let i = 0; i < reserved; i += 8) {
      const explicit = Array.from({ length: Math.min(8, reserved - i) }, (_, k) => ({
        ...search(),
        vmid: 100 + guests + 2 * (i + k),
      }));
      await store.reserveMany(node, explicit);
    }
    if (batch === 1) {
      // Fills (REFRESH and a ZRANGE in one MULTI: EXEC's time): the same set again (the usual
      // refresh), then a set with one guest more and one less (a change seen in Proxmox).
      const guestsNow = Array.from({ length: guests }, (_, i) => 100 + i);
      const changed = [...guestsNow.slice(1), 100 + guests + 2 * reserved + 1];
      for (const [kind, taken, ttl] of [
        ['unchanged', guestsNow, 3_600],
        // With a TTL of a second: the next fill finds the cache expired.
        ['one guest created and one destroyed', changed, 1],
        ['after the cache expired, one guest created', [...changed, 100 + guests + 2 * reserved + 3], 3_600],
      ] as const) {
        if (kind.startsWith('after')) await new Promise((r) => setTimeout(r, 1_100));
        const before = await commandStats(admin);
        await store.refresh(node, taken, ttl, null);
        const after = await commandStats(admin);
        const usec = (after.get('exec')?.usec ?? 0) - (before.get('exec')?.usec ?? 0);
        console.log(`${guests} guests + ${reserved} reservations, fill (${kind}): ${usec} µs`);
      }
      // A read that reaches Redis (READ), before the reservations below add to the space.
      const before = await commandStats(admin);
      for (let i = 0; i < READS; i++) await store.read(node);
      const after = await commandStats(admin);
      const spent = (command: string) => ({
        calls: (after.get(command)?.calls ?? 0) - (before.get(command)?.calls ?? 0),
        usec: (after.get(command)?.usec ?? 0) - (before.get(command)?.usec ?? 0),
      });
      // A read is a MULTI (READ, then a plain ZRANGE): EXEC's time is the whole of it.
      const { calls, usec } = spent('exec').calls > 0 ? spent('exec') : spent('evalsha');
      console.log(
        `${guests} guests + ${reserved} reservations, read: ${(usec / calls).toFixed(1)} µs per read (${calls} reads)`,
      );
    }
    const before = await commandStats(admin);
    if (CALLGRIND_PID) {
      callgrind('-i', 'on');
      callgrind('-z');
    }
    for (let i = 0; i < SCRIPTS; i++) await store.reserveMany(node, Array.from({ length: batch }, search));
    const instructions = CALLGRIND_PID ? instructionsSinceZero() : null;
    if (CALLGRIND_PID) callgrind('-i', 'off');
    const after = await commandStats(admin);
    const delta = [...after]
      .map(([name, a]) => {
        const b = before.get(name) ?? { calls: 0, usec: 0 };
        return { name, calls: a.calls - b.calls, usec: a.usec - b.usec };
      })
      .filter((d) => d.calls > 0);
    const evalsha = delta.find((d) => d.name === 'evalsha');
    if (!evalsha) throw new Error('no EVALSHA counted');
    const called = delta
      .filter((d) => d.name !== 'evalsha' && d.calls >= evalsha.calls / 2)
      .sort((x, y) => y.usec - x.usec)
      .map((d) => `${d.name} ${(d.calls / evalsha.calls).toFixed(1)}`)
      .join(', ');
    const counted =
      instructions === null ? '' : `, ${Math.round(instructions / SCRIPTS).toLocaleString('en')} instructions`;
    console.log(
      `${guests} guests + ${reserved} reservations, ${batch} per script: ${(evalsha.usec / evalsha.calls).toFixed(1)} µs per script${counted} (${evalsha.calls} scripts); calls per script: ${called}`,
    );
  } finally {
    await store.close();
    await deleteKeysWithPrefix(admin, prefix);
    admin.disconnect();
    redis.disconnect();
  }
}

for (const [guests, reserved] of [
  [100, 0],
  [100, 500],
  [10_000, 10_000],
] as const) {
  for (const batch of [1, 8]) await measure(guests, reserved, batch);
}
