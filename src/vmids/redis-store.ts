import { createHash, randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { type ChainableCommander, ReplyError } from 'ioredis';
import type { Logger } from 'pino';
import { SingleFlight } from '../concurrency/single-flight.js';
import { DomainError, NotFoundError } from '../errors.js';
import { CacheUnavailableError } from './errors.js';
import { LocalSnapshots } from './local-snapshots.js';
import { type ConnectionWatch, isCluster, type RedisClient, watchConnection } from '../redis/redis.js';
import { RedisEventHub } from './redis-event-hub.js';
import * as replies from './redis-replies.js';
import * as scripts from './redis-scripts.js';
import {
  type Guest,
  type GuestListing,
  type HeldReservation,
  type RefusedReservation,
  type NextFreeOutcome,
  type RefreshOutcome,
  type SetRefreshOutcome,
  type ReservationSeeder,
  type ReserveOutcome,
  type ReserveRequest,
  setOutcome,
  type VmidSnapshot,
  type VmidStore,
} from './store.js';
import type { NodeRef, VmidEvent } from './types.js';

/**
 * The scripts as ioredis commands (EVALSHA, reloaded by ioredis on NOSCRIPT). Each but unlock
 * takes the node's keys (nodeKeys, in its order) and then its ARGV (see redis-scripts.ts).
 */
type NodeKeys = [
  cache: string,
  meta: string,
  reservations: string,
  state: string,
  tmp: string,
  lock: string,
  used: string,
  owners: string,
  held: string,
  last: string,
  log: string,
];
interface ScriptCommands {
  pvgVmidEventsAfter(log: string, state: string, version: string): Promise<unknown>;
  pvgVmidState(...args: NodeKeys): Promise<unknown>;
  pvgVmidInvalidate(...args: [...NodeKeys, channel: string, nodeJson: string]): Promise<unknown>;
  /** ARGV: channel, nodeJson, holdMs, then vmid, min, max, ttlMs, owner per request. */
  pvgVmidReserve(
    ...args: [...NodeKeys, channel: string, nodeJson: string, holdMs: string, ...requests: string[]]
  ): Promise<unknown>;
  pvgVmidNextFree(
    ...args: [...NodeKeys, min: string, max: string, channel: string, nodeJson: string, holdMs: string]
  ): Promise<unknown>;
  pvgVmidRelease(
    ...args: [...NodeKeys, vmid: string, channel: string, nodeJson: string, owner: string, holdMs: string]
  ): Promise<unknown>;
  pvgVmidConsume(
    ...args: [...NodeKeys, vmid: string, channel: string, nodeJson: string, holdMs: string]
  ): Promise<unknown>;
  pvgVmidExpireDue(...args: [...NodeKeys, channel: string, nodeJson: string, holdMs: string]): Promise<unknown>;
  pvgVmidUnlock(lock: string, token: string): Promise<unknown>;
  pvgVmidSeedAbandon(state: string, token: string): Promise<unknown>;
  /** ARGV: channel, nodeJson, holdMs, then vmid, expiresAt, owner, rowExpiresAt|'', rowOwner per refused one. */
  pvgVmidSettleRefused(
    ...args: [...NodeKeys, channel: string, nodeJson: string, holdMs: string, ...refused: string[]]
  ): Promise<unknown>;
  pvgVmidForget(...args: [...NodeKeys, channel: string, nodeJson: string]): Promise<unknown>;
  pvgVmidSeed(
    ...args: [
      ...NodeKeys,
      channel: string,
      nodeJson: string,
      force: '0' | '1',
      versionFloor: string,
      token: string,
      part: string,
      final: '0' | '1',
      ...held: string[],
    ]
  ): Promise<unknown>;
  pvgVmidRevive(state: string): Promise<unknown>;
}

const NODE_KEYS = 11;
/**
 * Reservations put back per SEED call: a part costs Redis no more than a RESERVE script of 8,
 * whatever the space holds (a part of 250 took 2.4 ms on a slow 2-core VM: each reservation
 * costs about 2 µs in each of two sets that grow to the space's size, even written with one
 * call per key; a part of 64 reached 1 ms under load where RESERVE scripts stayed under 0.8).
 * A space's tens of thousands in one call would hold Redis that much longer, and overflow the
 * client's call stack as arguments (a space of 60,000 could not be seeded at all).
 */
const SEED_PART = 32;
/**
 * The most reservations one RESERVE script decides. Redis runs one script at a time, so a
 * script's length is what any other command may wait behind: alone, a script takes about
 * 0.08–0.1 ms for one reservation and 0.14 ms for 8 (`npm run bench:script`), more the larger
 * the batch; a larger batch is split.
 */
const RESERVE_SCRIPT_MAX = 8;
/** How long a call waits before it looks again at a space another instance is seeding. */
const SEED_RETRY_MS = 50;
/**
 * How long a call keeps looking at a space that is not seeded yet: past the hold of a seed whose
 * instance died (SEED_HOLD_MS), so a call outlives a dead seeder's claim and seeds itself.
 */
const SEED_WAIT_LIMIT_MS = scripts.SEED_HOLD_MS + 5_000;
const SCRIPTS: Record<keyof ScriptCommands, { keys: number; lua: string }> = {
  pvgVmidState: { keys: NODE_KEYS, lua: scripts.STATE },
  pvgVmidInvalidate: { keys: NODE_KEYS, lua: scripts.INVALIDATE },
  pvgVmidReserve: { keys: NODE_KEYS, lua: scripts.RESERVE },
  pvgVmidNextFree: { keys: NODE_KEYS, lua: scripts.NEXT_FREE },
  pvgVmidRelease: { keys: NODE_KEYS, lua: scripts.RELEASE },
  pvgVmidConsume: { keys: NODE_KEYS, lua: scripts.CONSUME },
  pvgVmidExpireDue: { keys: NODE_KEYS, lua: scripts.EXPIRE_DUE },
  pvgVmidUnlock: { keys: 1, lua: scripts.UNLOCK },
  pvgVmidSeedAbandon: { keys: 1, lua: scripts.SEED_ABANDON },
  pvgVmidSettleRefused: { keys: NODE_KEYS, lua: scripts.SETTLE_REFUSED },
  pvgVmidForget: { keys: NODE_KEYS, lua: scripts.FORGET },
  pvgVmidSeed: { keys: NODE_KEYS, lua: scripts.SEED },
  pvgVmidEventsAfter: { keys: 2, lua: scripts.EVENTS_AFTER },
  pvgVmidRevive: { keys: 1, lua: scripts.REVIVE },
};

/**
 * Scripts that run with plain commands after them in one MULTI (RedisVmidStore.inTransaction),
 * all with the node's keys: READ (ARGV: channel, nodeJson, holdMs), REFRESH and REFRESH_DELTA
 * (ARGV: see the scripts) and STATE (no ARGV; also a command of its own, pvgVmidState).
 */
const TRANSACTION_SCRIPTS = {
  read: scripts.READ,
  refresh: scripts.REFRESH,
  refreshDelta: scripts.REFRESH_DELTA,
  state: scripts.STATE,
} as const;
type TransactionScript = keyof typeof TRANSACTION_SCRIPTS;

/** Key names relative to the connection's keyPrefix (ioredis adds it to every key). */
const keys = (nodeId: string) => ({
  state: `vmid-version:{${nodeId}}`,
  lock: `vmid-lock:{${nodeId}}`,
  /** The guest listing (putGuests): compact JSON, expiring with the set it came with. Not a script key. */
  guests: `vmid-guests:{${nodeId}}`,
});

/** A reservation as the scripts take it: vmid, expiresAt (ms), owner. */
const heldArgs = (r: HeldReservation): string[] => [String(r.vmid), String(r.expiresAt.getTime()), r.owner];

/** Every key of the node, in the order the scripts take them (redis-scripts.ts). */
export const nodeKeys = (nodeId: string): NodeKeys => [
  `vmid-cache:{${nodeId}}`,
  `vmid-meta:{${nodeId}}`,
  `vmid-reservations:{${nodeId}}`,
  `vmid-version:{${nodeId}}`,
  `vmid-cache-tmp:{${nodeId}}`,
  `vmid-lock:{${nodeId}}`,
  `vmid-used:{${nodeId}}`,
  `vmid-owners:{${nodeId}}`,
  `vmid-held:{${nodeId}}`,
  `vmid-last:{${nodeId}}`,
  `vmid-log:{${nodeId}}`,
];

/** Where a read was answered from; `renewal`: a kept copy read again in the background. */
export type SnapshotReadSource = 'memory' | 'redis' | 'renewal';

export interface RedisVmidStoreOptions {
  /**
   * The pub/sub connection. Default: `redis.duplicate()`, made on first use and closed by
   * close(). A given one is left open; it serves this store alone (close() ends its pattern
   * subscription).
   */
  subscriber?: RedisClient;
  log?: Logger;
  /**
   * VMID_READ_CACHE_MS: how long this instance may answer a node's snapshot from memory
   * (LocalSnapshots: changes announced over pub/sub end it at once). 0 (the default here):
   * every read asks Redis.
   */
  localReadMs?: number;
  /** Told where each read was answered from, and of each renewal sent to Redis (metrics). */
  onRead?: (source: SnapshotReadSource) => void;
  /** Where a space's reservations come back from after Redis lost them (see SEED). None: nothing comes back. */
  seeder?: ReservationSeeder;
  /**
   * VMID_REUSE_HOLD_S in ms: how long a VMID that left the used set (guest gone, reservation
   * released or lapsed) is skipped by a search without a vmid (reserve, nextFree). 0 (the
   * default here): handed out again at once.
   */
  reuseHoldMs?: number;
}

/**
 * The VMID store of a deployment with REDIS_URL: shared by every instance, so the cache,
 * reservations, versions and events are the same whichever instance a request reaches.
 *
 * Connection failures surface as CacheUnavailableError (SERVICE_UNAVAILABLE); Redis replies
 * that are errors (a bug, a wrong key type) are not wrapped and end up masked as internal.
 */
export class RedisVmidStore implements VmidStore {
  private readonly redis: RedisClient & ScriptCommands;
  /** On a Redis Cluster: events over sharded pub/sub, channels hash-tagged like the keys. */
  private readonly sharded: boolean;
  private readonly keyPrefix: string;
  private readonly log: Logger | undefined;
  private subscriber: RedisClient | null;
  private readonly ownsSubscriber: boolean;
  private hub: RedisEventHub | null = null;
  private readonly connection: ConnectionWatch;
  private readonly local: LocalSnapshots | null;
  private stopWatching: (() => void) | null = null;
  private readonly onRead: ((source: SnapshotReadSource) => void) | undefined;
  private readonly seeder: ReservationSeeder | undefined;
  /** Seeds in progress, by space (see seed). */
  private readonly seeds = new SingleFlight<string, void>();
  /** reuseHoldMs, as the scripts' holdMs argument. */
  private readonly holdMs: string;
  /** The scripts run inside a MULTI (inTransaction), as this store defined them. */
  private readonly sources = new Map<TransactionScript, { lua: string; sha: string }>();

  constructor(redis: RedisClient, opts: RedisVmidStoreOptions = {}) {
    this.sharded = isCluster(redis);
    for (const [name, { keys: numberOfKeys, lua }] of Object.entries(SCRIPTS)) {
      // On a cluster an event goes to the shard that owns the space (SPUBLISH): its channel is
      // hash-tagged with the space, so the script's keys and channel are in one slot.
      redis.defineCommand(name, { numberOfKeys, lua: this.sharded ? scripts.sharded(lua) : lua });
    }
    for (const [name, lua] of Object.entries(TRANSACTION_SCRIPTS)) {
      const source = this.sharded ? scripts.sharded(lua) : lua;
      this.sources.set(name as TransactionScript, {
        lua: source,
        sha: createHash('sha1').update(source).digest('hex'),
      });
    }
    this.redis = redis as RedisClient & ScriptCommands;
    this.connection = watchConnection(redis);
    // ioredis prefixes keys but not pub/sub channels: channels get the prefix from us.
    this.keyPrefix = redis.options.keyPrefix ?? '';
    this.log = opts.log;
    this.subscriber = opts.subscriber ?? null;
    this.ownsSubscriber = !opts.subscriber;
    this.local = opts.localReadMs ? new LocalSnapshots(opts.localReadMs) : null;
    this.onRead = opts.onRead;
    this.seeder = opts.seeder;
    this.holdMs = String(Math.max(0, Math.floor(opts.reuseHoldMs ?? 0)));
  }

  /**
   * Channel of every VMID event of one space (named by the `id` its changes are made with;
   * node subscriptions filter it). On a cluster in the space's hash slot, with its keys.
   */
  channel(userId: string): string {
    return this.sharded ? `${this.keyPrefix}vmid-events:{${userId}}` : `${this.keyPrefix}vmid-events:${userId}`;
  }

  /**
   * PUBLISH, or SPUBLISH on a cluster (to the shard that owns the channel's slot; ioredis
   * prefixes a sharded channel like a key, so it gets the name without the prefix).
   */
  private publish(channel: string, message: string): Promise<unknown> {
    return this.sharded
      ? this.redis.spublish(channel.slice(this.keyPrefix.length), message)
      : this.redis.publish(channel, message);
  }

  private async run<T>(op: () => Promise<T>): Promise<T> {
    // While ioredis reconnects, a command would wait in its offline queue for up to two
    // reconnect intervals (seconds) before failing: answer at once instead.
    if (this.connection.down()) throw new CacheUnavailableError();
    try {
      return await op();
    } catch (err) {
      if (err instanceof DomainError || err instanceof ReplyError) throw err;
      throw new CacheUnavailableError(undefined, err);
    }
  }

  /**
   * A script, then plain commands, in one MULTI: the commands see the space exactly as the
   * script left it. For answers that would otherwise carry a long list through Lua: the
   * reservations' VMIDs by a plain ZRANGE cost Redis a fraction of what READ's ZRANGE WITHSCORES
   * cost through Lua (about 6 ms at 10,000 reservations). The script goes by EVALSHA, or by
   * EVAL when Redis does not know it (NOSCRIPT: a restarted or new master), not through the
   * script command, whose NOSCRIPT retry would run it outside the MULTI. An error reply (the
   * space not seeded) is thrown as the script command throws it.
   */
  private async inTransaction(
    name: TransactionScript,
    args: readonly string[],
    more: (tx: ChainableCommander) => unknown,
  ): Promise<unknown[]> {
    const { lua, sha } = this.sources.get(name)!;
    for (let byBody = false; ; byBody = true) {
      const tx = this.redis.multi();
      if (byBody) tx.eval(lua, NODE_KEYS, ...args);
      else tx.evalsha(sha, NODE_KEYS, ...args);
      more(tx);
      const results = await tx.exec();
      if (!results) throw new Error('Redis discarded the transaction');
      const scriptError = results[0]?.[0];
      if (scriptError && !byBody && scriptError.message.includes('NOSCRIPT')) continue;
      return results.map(([err, value]) => {
        if (err) throw err;
        return value;
      });
    }
  }

  /**
   * READ, REFRESH or REFRESH_DELTA (ARGV after the node's keys: `argv`), then the reservations'
   * VMIDs, ascending; `reserved` false: the script alone (the reservations answered as none).
   */
  private async withReserved(
    name: 'read' | 'refresh' | 'refreshDelta',
    node: NodeRef,
    argv: readonly string[],
    reserved = true,
  ): Promise<{ reply: unknown; reserved: number[] }> {
    const k = nodeKeys(node.id);
    const [reply, members] = await this.inTransaction(name, [...k, ...argv], (tx) =>
      reserved ? tx.zrange(k[2], 0, -1) : tx,
    );
    return { reply, reserved: reserved ? replies.decodeVmids(name, members) : [] };
  }

  async read(node: NodeRef): Promise<VmidSnapshot> {
    const local = this.local;
    const kept = local?.get(node.id);
    this.onRead?.(kept ? 'memory' : 'redis');
    if (!local) return (await this.readFromRedis(node)).snapshot;
    if (kept) {
      if (this.sharded) this.spaceWatches.get(node.id)?.touch();
      if (local.refreshDue(node.id)) this.renew(node, local);
      return kept;
    }
    if (!this.stopWatching) this.watchChanges(local);
    // On a cluster a space's events reach this instance only once its channel is subscribed.
    const watched = this.sharded ? await this.watchSpace(node) : true;
    const pending = watched ? local.begin(node.id) : null;
    let answer: { snapshot: VmidSnapshot; redisNowMs: number };
    try {
      answer = await this.readFromRedis(node);
    } catch (err) {
      if (pending) local.abandon(pending);
      throw err;
    }
    if (pending) local.keep(pending, answer.snapshot, answer.redisNowMs);
    return answer.snapshot;
  }

  /**
   * Reads the node again in the background and keeps the answer, while its kept copy still
   * answers. If the read fails, or finds the set no longer cached, the copy just runs out and
   * the next read asks Redis itself (and reports what it finds).
   */
  private renew(node: NodeRef, local: LocalSnapshots): void {
    const pending = local.begin(node.id);
    if (!pending) return;
    this.onRead?.('renewal');
    this.readFromRedis(node).then(
      (answer) => local.keep(pending, answer.snapshot, answer.redisNowMs),
      () => local.abandon(pending),
    );
  }

  /** Nodes whose snapshot this instance answers from memory now (tests). */
  keptSnapshots(): number {
    return this.local?.size() ?? 0;
  }

  /** Spaces whose channel this instance listens to for its kept snapshots (cluster only; tests). */
  watchedSpaces(): number {
    return this.spaceWatches.size;
  }

  /** Whether reads are kept in memory now: starts them (tests wait for it). */
  keepsSnapshots(): boolean {
    if (!this.local) return false;
    if (!this.stopWatching) this.watchChanges(this.local);
    return this.local.keeping();
  }

  /**
   * Every node's events, so the snapshots kept in memory end when their node changes: one
   * pattern subscription, or on a Redis Cluster (no patterns for sharded channels, and a
   * pattern would not be carried between shards anyway) one subscription per space read
   * (watchSpace), each at the shard that owns the space.
   */
  private watchChanges(local: LocalSnapshots): void {
    const delivery = { onLive: () => local.resumed(), onLost: () => local.lost() };
    if (this.sharded) {
      const stop = this.eventHub().watchDelivery(delivery);
      this.stopWatching = () => {
        stop();
        for (const watch of this.spaceWatches.values()) watch.stop();
        this.spaceWatches.clear();
      };
      return;
    }
    const escaped = this.keyPrefix.replace(/[\\*?[\]]/g, '\\$&');
    this.stopWatching = this.eventHub().watchPattern(`${escaped}vmid-events:*`, {
      onMessage: (message) => this.changeAnnounced(local, message),
      ...delivery,
    });
  }

  private changeAnnounced(local: LocalSnapshots, message: string): void {
    // Its channel copy, delivered first to a listener of this instance, has done it already.
    if (message === this.lastMessage) return;
    const nodeId = nodeIdOf(message);
    if (nodeId !== null) local.changed(nodeId);
    // A message that is not an event may still have been a change: keep nothing.
    else local.clear();
  }

  /** Spaces whose channel this instance subscribes to for its kept snapshots (cluster only). */
  private readonly spaceWatches = new Map<string, SpaceWatch>();
  private spaceWatchesSweptAt = 0;

  /**
   * Subscribes to the space's channel (once; dropped again after SPACE_WATCH_IDLE_MS without
   * a read) and answers whether it is subscribed, so a read of it may be kept.
   */
  private async watchSpace(node: NodeRef): Promise<boolean> {
    const local = this.local!;
    const existing = this.spaceWatches.get(node.id);
    if (existing) {
      existing.touch();
      return existing.live();
    }
    this.sweepSpaceWatches(local);
    const watch = new SpaceWatch(() => local.changed(node.id));
    this.spaceWatches.set(node.id, watch);
    try {
      const stop = await this.eventHub().listen(this.channel(node.id), (message) =>
        this.changeAnnounced(local, message),
      );
      watch.subscribed(stop);
    } catch {
      watch.stop();
    }
    if (this.spaceWatches.get(node.id) !== watch) return false;
    if (!watch.live()) this.spaceWatches.delete(node.id);
    return watch.live();
  }

  private sweepSpaceWatches(local: LocalSnapshots): void {
    const now = performance.now();
    if (now - this.spaceWatchesSweptAt < 10_000) return;
    this.spaceWatchesSweptAt = now;
    const idleFrom = now - Math.max(SPACE_WATCH_IDLE_MS, 2 * local.maxAge());
    for (const [spaceId, watch] of this.spaceWatches) {
      if (watch.usedAt > idleFrom) continue;
      watch.stop();
      this.spaceWatches.delete(spaceId);
    }
  }

  /**
   * A change made here drops the node's kept snapshot before it is answered (and also when
   * it failed: it may have happened), so this instance's own reads follow its own changes
   * without waiting for the event.
   */
  private async change<T>(node: NodeRef, op: () => Promise<T>): Promise<T> {
    try {
      return await this.seeded(node, op);
    } finally {
      this.local?.changed(node.id);
    }
  }

  /**
   * Runs a script; if it finds the space not seeded (its reservations may be lost), puts the
   * durable record's reservations back first (SEED) and runs it again.
   */
  private async seeded<T>(node: NodeRef, op: () => Promise<T>): Promise<T> {
    let giveUpAt: number | undefined;
    for (;;) {
      try {
        return await this.run(op);
      } catch (err) {
        if (!(err instanceof ReplyError && (err as Error).message.includes(scripts.UNSEEDED_REPLY))) throw err;
        giveUpAt ??= Date.now() + SEED_WAIT_LIMIT_MS;
        // Another instance's seed that never ended (or kept being lost): not this call's to wait out.
        if (Date.now() > giveUpAt) throw new CacheUnavailableError(undefined, err);
      }
      await this.seed(node);
    }
  }

  /**
   * Puts the durable record's reservations and version back (SEED; nothing if seeded
   * meanwhile). Concurrent calls that found the space lost share one seed: each would read
   * every live reservation of the space from the database and send them all to Redis (a space
   * holding 50,000 reservations under a load of 32 calls made no progress for seconds).
   */
  private seed(node: NodeRef): Promise<void> {
    return this.seeds.run(node.id, () => this.seedOnce(node));
  }

  /**
   * One seed (see SEED): the space is claimed first, and only then are its reservations read
   * from the record (a space's tens of thousands, not to be read by every instance that waits)
   * and put back in parts, the last one marking it seeded. Another instance seeding the space,
   * or the space lost between two parts: after a short wait the caller looks again (seeded()
   * runs its script, which refuses the space until it is seeded).
   */
  private async seedOnce(node: NodeRef): Promise<void> {
    const token = randomUUID();
    const claim = await this.seedPart(node, { token, part: 0, final: false, versionFloor: 0, held: [] });
    if (claim === 0) return; // seeded meanwhile
    if (claim !== 1) return void (await sleep(SEED_RETRY_MS)); // another instance is seeding it
    try {
      const { held, version } = this.seeder ? await this.seeder(node.id) : { held: [], version: 0 };
      // An empty record is one final part.
      for (let part = 1, from = 0; part === 1 || from < held.length; part++, from += SEED_PART) {
        const reply = await this.seedPart(node, {
          token,
          part,
          final: from + SEED_PART >= held.length,
          versionFloor: version,
          held: held.slice(from, from + SEED_PART),
        });
        if (reply === 0) return;
        if (reply !== 1) return void (await sleep(SEED_RETRY_MS)); // lost between parts: seed again
      }
      if (held.length > 0) {
        this.log?.info(
          { spaceId: node.id, reservations: held.length },
          'vmid reservations put back from the durable record',
        );
      }
    } catch (err) {
      // Failed after the claim: another instance (or this one's next call) may seed at once.
      await this.run(() => this.redis.pvgVmidSeedAbandon(keys(node.id).state, token)).catch(() => undefined);
      throw err;
    }
  }

  /** One SEED call: 1 done, 0 seeded already, -1 another instance is seeding, -2 lost between parts. */
  private async seedPart(
    node: NodeRef,
    p: {
      token: string;
      part: number;
      final: boolean;
      versionFloor: number;
      held: readonly HeldReservation[];
      force?: boolean;
    },
  ): Promise<number> {
    const args = p.held.flatMap(heldArgs);
    return replies.decodeInteger(
      'seed',
      await this.run(() =>
        this.redis.pvgVmidSeed(
          ...nodeKeys(node.id),
          this.channel(node.id),
          JSON.stringify(node.id),
          p.force ? '1' : '0',
          String(p.versionFloor),
          p.token,
          String(p.part),
          p.final ? '1' : '0',
          ...args,
        ),
      ),
    );
  }

  /** Puts back reservations a seeded space lost (SEED with force: no claim, in parts all the same). */
  async restore(node: NodeRef, held: readonly HeldReservation[]): Promise<void> {
    try {
      for (let from = 0; from < held.length; from += SEED_PART) {
        const part = held.slice(from, from + SEED_PART);
        await this.seeded(node, () =>
          this.seedPart(node, { token: '', part: 0, final: false, versionFloor: 0, held: part, force: true }),
        );
      }
    } finally {
      this.local?.changed(node.id);
    }
  }

  /**
   * `vmid-guests:{id}` (the space's hash slot), set right after the fill's REFRESH with the
   * set's expiry: a plain SET, not part of the script (a reader checks `refreshedAt`).
   */
  async putGuests(node: NodeRef, listing: GuestListing): Promise<void> {
    const value = JSON.stringify({
      r: listing.refreshedAt.getTime(),
      e: listing.expiresAt.getTime(),
      g: listing.guests.map((g) => [g.vmid, g.type === 'lxc' ? 'l' : 'q', g.name, g.node, g.status]),
    });
    // An expiry in the past (a slow fill of a short TTL) leaves no key.
    await this.run(() => this.redis.set(keys(node.id).guests, value, 'PXAT', listing.expiresAt.getTime()));
  }

  async guests(node: NodeRef): Promise<GuestListing | null> {
    const value = await this.run(() => this.redis.get(keys(node.id).guests));
    if (value === null) return null;
    const listing = parseGuests(value);
    if (!listing) this.log?.warn({ spaceId: node.id }, 'ignored a malformed guest listing');
    return listing;
  }

  private async readFromRedis(node: NodeRef): Promise<{ snapshot: VmidSnapshot; redisNowMs: number }> {
    const { reply, reserved } = await this.seeded(node, () =>
      this.withReserved('read', node, [this.channel(node.id), JSON.stringify(node.id), this.holdMs]),
    );
    const { version, nowMs, firstExpiry, refreshedAt, expiresAt, taken } = replies.decodeRead(reply);
    const snapshot: VmidSnapshot = {
      version,
      reserved,
      firstExpiry: firstExpiry === null ? null : new Date(firstExpiry),
      cache:
        refreshedAt === null
          ? null
          : {
              taken: takenList(taken),
              refreshedAt: new Date(refreshedAt),
              expiresAt: new Date(expiresAt ?? refreshedAt),
            },
    };
    return { snapshot, redisNowMs: nowMs };
  }

  /** Seeds the space first when it lost its mark, so a version read never goes backwards. */
  async state(nodeId: string) {
    const node = { id: nodeId, userId: nodeId, spaceId: nodeId };
    const [version, epoch, deleted] = replies.decodeState(
      await this.seeded(node, () => this.redis.pvgVmidState(...nodeKeys(nodeId))),
    );
    return { version, epoch, deleted };
  }

  async refresh(
    node: NodeRef,
    taken: readonly number[],
    ttlSeconds: number,
    expectedEpoch: number | null,
  ): Promise<RefreshOutcome> {
    return this.fill(node, taken, ttlSeconds, expectedEpoch, true);
  }

  async refreshSet(
    node: NodeRef,
    taken: readonly number[],
    ttlSeconds: number,
    expectedEpoch: number | null,
  ): Promise<SetRefreshOutcome> {
    return setOutcome(await this.fill(node, taken, ttlSeconds, expectedEpoch, false));
  }

  /** What a read answers as cached: the meta hash is there (an instance's current copy first). */
  async isCached(node: NodeRef): Promise<boolean> {
    const kept = this.local?.get(node.id);
    if (kept) return kept.cache !== null;
    return (await this.run(() => this.redis.exists(nodeKeys(node.id)[1]))) === 1;
  }

  /** refresh, with the reservations read in the same step or (`reserved` false) not. */
  private async fill(
    node: NodeRef,
    taken: readonly number[],
    ttlSeconds: number,
    expectedEpoch: number | null,
    reserved: boolean,
  ): Promise<RefreshOutcome> {
    const list = ascendingUnique(taken);
    const joined = list.join(',');
    const argv = [
      String(ttlSeconds * 1000),
      expectedEpoch === null ? '' : String(expectedEpoch),
      this.channel(node.id),
      JSON.stringify(node.id),
      this.holdMs,
      joined,
    ];
    const { reply: raw, reserved: live } = await this.change(
      node,
      async () =>
        (await this.refreshByDelta(node, list, argv, reserved)) ?? this.withReserved('refresh', node, argv, reserved),
    );
    const reply = replies.decodeRefresh(raw);
    if (reply.status === 'stale') return { written: false, version: reply.version };
    if (reply.status === 'gone') throw new NotFoundError('Node', node.id);
    return {
      written: true,
      changed: reply.changed,
      snapshot: {
        version: reply.version,
        reserved: live,
        firstExpiry: reply.firstExpiry === null ? null : new Date(reply.firstExpiry),
        cache: { taken: list, refreshedAt: new Date(reply.refreshedAt), expiresAt: new Date(reply.expiresAt) },
      },
    };
  }

  /**
   * A fill sent as the change since the set was last written (REFRESH_DELTA: Redis's work
   * grows with the change, not with the cluster), also when the cache expired or was
   * invalidated since; or null where REFRESH must do it: nothing written before, no set kept
   * (an empty one, or none for RETAIN_MS), the same set still cached (REFRESH keeps it as it
   * is), or a set REFRESH_DELTA does not trust. vmid-last is read first; the script checks it is
   * still what the change was found against.
   */
  private async refreshByDelta(
    node: NodeRef,
    list: readonly number[],
    argv: readonly string[],
    reserved: boolean,
  ): Promise<{ reply: unknown; reserved: number[] } | null> {
    const joined = argv[5]!;
    const k = nodeKeys(node.id);
    const [[, previous], [, cached], [, kept]] = (await this.redis
      .multi()
      .get(k[9])
      .exists(k[1])
      .exists(k[0])
      .exec()) as [[unknown, string | null], [unknown, number], [unknown, number]];
    // No set kept to move (REFRESH writes it whole), or the same set still cached (REFRESH keeps it).
    if (previous === null || kept !== 1 || list.length === 0 || (previous === joined && cached === 1)) return null;
    const before = previous === '' ? [] : previous.split(',').map(Number);
    const { added, removed } = changeBetween(before, list);
    const delta = await this.withReserved(
      'refreshDelta',
      node,
      [
        ...argv,
        previous,
        added.join(','),
        removed.join(','),
        createHash('sha1').update(joined).digest('hex'),
        String(before.length),
      ],
      reserved,
    );
    return replies.isFullRefresh(delta.reply) ? null : delta;
  }

  async invalidate(node: NodeRef) {
    const { existed, version } = replies.decodeInvalidate(
      await this.change(node, () =>
        this.redis.pvgVmidInvalidate(...nodeKeys(node.id), this.channel(node.id), JSON.stringify(node.id)),
      ),
    );
    if (existed === -1) throw new NotFoundError('Node', node.id);
    return { existed: existed === 1, version };
  }

  /**
   * Decides the requests in order, RESERVE_SCRIPT_MAX to a script: the scripts go out together
   * and run back to back, and no other client waits behind more than one. Each part is one
   * atomic step; should Redis lose the space between two of them, the later parts run on the
   * record's reservations once they are back, which lack the earlier parts' (the durable store
   * lets the first of a VMID made twice stand). A script that fails fails the whole call, and
   * what the others made is released first; a reservation whose release fails as well (Redis
   * unreachable) was neither recorded nor answered, and lapses at its expiry.
   */
  async reserveMany(node: NodeRef, requests: readonly ReserveRequest[]): Promise<ReserveOutcome[]> {
    if (requests.length <= RESERVE_SCRIPT_MAX) return this.reservePart(node, requests);
    const parts: Array<Promise<ReserveOutcome[]>> = [];
    for (let i = 0; i < requests.length; i += RESERVE_SCRIPT_MAX) {
      parts.push(this.reservePart(node, requests.slice(i, i + RESERVE_SCRIPT_MAX)));
    }
    const settled = await Promise.allSettled(parts);
    const failed = settled.find((s) => s.status === 'rejected');
    if (!failed) return settled.flatMap((s) => (s.status === 'fulfilled' ? s.value : []));
    const made = settled.flatMap((s, part) =>
      s.status === 'fulfilled'
        ? s.value.flatMap((o, i) =>
            o.status === 'reserved' ? [{ vmid: o.vmid, owner: requests[part * RESERVE_SCRIPT_MAX + i]!.owner }] : [],
          )
        : [],
    );
    await Promise.all(made.map((m) => this.release(node, m.vmid, m.owner).catch(() => false)));
    throw failed.reason;
  }

  private async reservePart(node: NodeRef, requests: readonly ReserveRequest[]): Promise<ReserveOutcome[]> {
    const args = requests.flatMap((r) => [
      r.vmid === null ? '' : String(r.vmid),
      String(r.min),
      String(r.max),
      String(r.ttlSeconds * 1000),
      r.owner,
    ]);
    const raw = await this.change(node, () =>
      this.redis.pvgVmidReserve(
        ...nodeKeys(node.id),
        this.channel(node.id),
        JSON.stringify(node.id),
        this.holdMs,
        ...args,
      ),
    );
    return replies
      .decodeReserveMany(raw, requests.length)
      .map((reply) => (reply.status === 'reserved' ? { ...reply, expiresAt: new Date(reply.expiresAt) } : reply));
  }

  /** A change: it may announce lapses. */
  async nextFree(node: NodeRef, min: number, max: number): Promise<NextFreeOutcome> {
    return replies.decodeNextFree(
      await this.change(node, () =>
        this.redis.pvgVmidNextFree(
          ...nodeKeys(node.id),
          String(min),
          String(max),
          this.channel(node.id),
          JSON.stringify(node.id),
          this.holdMs,
        ),
      ),
    );
  }

  async release(node: NodeRef, vmid: number, owner: string) {
    const removed = await this.change(node, () =>
      this.redis.pvgVmidRelease(
        ...nodeKeys(node.id),
        String(vmid),
        this.channel(node.id),
        JSON.stringify(node.id),
        owner,
        this.holdMs,
      ),
    );
    return replies.decodeInteger('release', removed) === 1;
  }

  async settleRefused(node: NodeRef, refused: readonly RefusedReservation[]): Promise<void> {
    const args = refused.flatMap(({ refused: r, row }) => [
      ...heldArgs(r),
      row ? String(row.expiresAt.getTime()) : '',
      row?.owner ?? '',
    ]);
    replies.decodeInteger(
      'settle',
      await this.change(node, () =>
        this.redis.pvgVmidSettleRefused(
          ...nodeKeys(node.id),
          this.channel(node.id),
          JSON.stringify(node.id),
          this.holdMs,
          ...args,
        ),
      ),
    );
  }

  async consume(node: NodeRef, vmid: number) {
    return replies.decodeConsume(
      await this.change(node, () =>
        this.redis.pvgVmidConsume(
          ...nodeKeys(node.id),
          String(vmid),
          this.channel(node.id),
          JSON.stringify(node.id),
          this.holdMs,
        ),
      ),
    );
  }

  async expireDue(node: NodeRef) {
    const { nowMs, nextMs } = replies.decodeExpireDue(
      await this.change(node, () =>
        this.redis.pvgVmidExpireDue(...nodeKeys(node.id), this.channel(node.id), JSON.stringify(node.id), this.holdMs),
      ),
    );
    return { nextInMs: nextMs === null ? null : Math.max(0, nextMs - nowMs) };
  }

  /**
   * After the seeded check (STATE): a space that lost its reservations gets them back first.
   * Whether it lapsed is judged by Redis's clock, as the scripts judge it (TIME in the MULTI).
   */
  async holder(node: NodeRef, vmid: number) {
    const k = nodeKeys(node.id);
    const [, until, owner, time] = await this.seeded(node, () =>
      this.inTransaction('state', k, (tx) => tx.zscore(k[2], String(vmid)).hget(k[7], String(vmid)).time()),
    );
    const expiresAt = typeof until === 'string' ? Number(until) : NaN;
    return expiresAt > replies.decodeTime(time)
      ? { owner: typeof owner === 'string' ? owner : '', expiresAt: new Date(expiresAt) }
      : null;
  }

  async announceGone(node: NodeRef, registrationId: string) {
    // The version as the scripts see it (after a new master's step), so DELETED never goes back.
    const { version } = await this.state(node.id);
    await this.run(async () => {
      const event = {
        nodeId: node.id,
        kind: 'DELETED',
        version,
        at: Date.now(),
        vmids: null,
        added: [],
        removed: [],
        registration: registrationId,
      };
      await this.publish(this.channel(node.id), JSON.stringify(event));
    });
  }

  async forget(node: NodeRef) {
    await this.change(node, () =>
      this.redis.pvgVmidForget(...nodeKeys(node.id), this.channel(node.id), JSON.stringify(node.id)),
    );
  }

  /** See REVIVE. */
  async revive(node: NodeRef) {
    try {
      await this.run(() => this.redis.pvgVmidRevive(keys(node.id).state));
    } finally {
      this.local?.changed(node.id);
    }
  }

  async eventsAfter(node: NodeRef, version: number) {
    const { version: current, messages } = replies.decodeEventsAfter(
      await this.run(() =>
        this.redis.pvgVmidEventsAfter(`vmid-log:{${node.id}}`, keys(node.id).state, String(version)),
      ),
    );
    const events: VmidEvent[] = [];
    for (const message of messages) {
      const event = parseEvent(message);
      if (event) events.push(event);
    }
    return { version: current, events };
  }

  async tryLock(nodeId: string, ttlMs: number) {
    const token = randomUUID();
    const ok = await this.run(() => this.redis.set(keys(nodeId).lock, token, 'PX', ttlMs, 'NX'));
    return ok === 'OK' ? token : null;
  }

  async unlock(nodeId: string, token: string) {
    replies.decodeInteger('unlock', await this.run(() => this.redis.pvgVmidUnlock(keys(nodeId).lock, token)));
  }

  async isLocked(nodeId: string) {
    return (await this.run(() => this.redis.exists(keys(nodeId).lock))) === 1;
  }

  /** Not under `vmid-events:` (the kept snapshots' pattern): a notice is not a change of a space. */
  private registrationChannel(userId: string): string {
    return this.sharded
      ? `${this.keyPrefix}vmid-registrations:{${userId}}`
      : `${this.keyPrefix}vmid-registrations:${userId}`;
  }

  async announceRegistration(node: NodeRef) {
    await this.run(() =>
      this.publish(
        this.registrationChannel(node.userId),
        JSON.stringify({ id: node.id, userId: node.userId, spaceId: node.spaceId }),
      ),
    );
  }

  async listenRegistrations(userId: string, onNode: (node: NodeRef) => void) {
    return this.eventHub().listen(this.registrationChannel(userId), (message) => {
      try {
        const raw = JSON.parse(message) as Partial<NodeRef>;
        if (typeof raw.id === 'string' && raw.userId === userId && typeof raw.spaceId === 'string')
          onNode({ id: raw.id, userId, spaceId: raw.spaceId });
      } catch {
        this.log?.warn({ message: message.slice(0, 200) }, 'ignored a malformed registration notice');
      }
    });
  }

  async listen(userId: string, onEvent: (event: VmidEvent) => void, onResync?: () => void) {
    return this.eventHub().listen(
      this.channel(userId),
      (message) => {
        const event = this.parsed(message);
        if (event) onEvent(event);
      },
      onResync,
    );
  }

  /** The hub hands one message to every local listener in a row: parse it once, share the event. */
  private lastMessage: string | null = null;
  private lastEvent: VmidEvent | null = null;
  private parsed(message: string): VmidEvent | null {
    if (message === this.lastMessage) return this.lastEvent;
    const event = parseEvent(message);
    if (!event) this.log?.warn({ message: message.slice(0, 200) }, 'ignored a malformed VMID event');
    // Redis delivers a channel's copy of an event before the pattern's (watchChanges, which
    // then skips it): a subscriber that re-reads on the event must not be answered from the
    // snapshot it ends. What is not an event may still have been a change: keep nothing.
    if (event) this.local?.changed(event.nodeId);
    else this.local?.clear();
    this.lastMessage = message;
    this.lastEvent = event;
    return event;
  }

  /** The pub/sub multiplexer (created with the first listener). */
  eventHub(): RedisEventHub {
    if (!this.hub) {
      if (!this.subscriber) {
        const sub = this.redis.duplicate();
        // Without a listener ioredis prints every connection error; the command connection
        // reports outages already.
        sub.on('error', (err: Error) => this.log?.debug({ err: { message: err.message } }, 'redis subscriber error'));
        this.subscriber = sub;
      }
      this.hub = new RedisEventHub(this.subscriber, watchConnection(this.subscriber), this.log);
    }
    return this.hub;
  }

  async close() {
    this.stopWatching?.();
    const sub = this.subscriber;
    this.hub = null;
    if (sub && this.ownsSubscriber) {
      this.subscriber = null;
      await sub.quit().catch(() => sub.disconnect());
    }
  }
}

/** How long a space's channel stays subscribed for kept snapshots after its last read (cluster). */
const SPACE_WATCH_IDLE_MS = 60_000;

/** One space's channel subscription for kept snapshots (cluster): see watchSpace. */
class SpaceWatch {
  usedAt = performance.now();
  private unsubscribe: (() => void) | null = null;
  private ended = false;

  /** `onEnd`: drops the space's kept snapshot (its changes are not seen any more). */
  constructor(private readonly onEnd: () => void) {}

  touch(): void {
    this.usedAt = performance.now();
  }
  subscribed(unsubscribe: () => void): void {
    if (this.ended) unsubscribe();
    else this.unsubscribe = unsubscribe;
  }
  live(): boolean {
    return this.unsubscribe !== null && !this.ended;
  }
  stop(): void {
    if (this.ended) return;
    this.ended = true;
    this.unsubscribe?.();
    this.onEnd();
  }
}

/**
 * The node of an event, read from the start the scripts give every event (`{"nodeId":"…",
 * "kind":`) without parsing the rest (a REFRESHED event carries the whole set, and every
 * instance receives every event). null when the message does not start so.
 */
function nodeIdOf(message: string): string | null {
  const head = '{"nodeId":"';
  if (!message.startsWith(head)) return null;
  const end = message.indexOf('","kind":', head.length);
  if (end < 0) return null;
  const id = message.slice(head.length, end);
  return id.includes('\\') || id.includes('"') ? null : id;
}

function parseEvent(message: string): VmidEvent | null {
  try {
    const raw = JSON.parse(message) as {
      nodeId?: unknown;
      kind?: unknown;
      version?: unknown;
      at?: unknown;
      vmids?: unknown;
      added?: unknown;
      removed?: unknown;
      expiresAt?: unknown;
      registration?: unknown;
    };
    if (
      typeof raw.nodeId !== 'string' ||
      typeof raw.kind !== 'string' ||
      typeof raw.version !== 'number' ||
      typeof raw.at !== 'number'
    ) {
      return null;
    }
    const numbers = (list: unknown) =>
      Array.isArray(list) ? list.filter((v): v is number => typeof v === 'number') : null;
    const event: VmidEvent = {
      nodeId: raw.nodeId,
      kind: raw.kind as VmidEvent['kind'],
      version: raw.version,
      at: new Date(raw.at),
      vmids: numbers(raw.vmids),
      added: numbers(raw.added) ?? [],
      removed: numbers(raw.removed) ?? [],
    };
    if (typeof raw.expiresAt === 'number') event.expiresAt = new Date(raw.expiresAt);
    if (typeof raw.registration === 'string') event.registration = raw.registration;
    return event;
  } catch {
    return null;
  }
}

/** putGuests' JSON back; null when it is not that. */
function parseGuests(value: string): GuestListing | null {
  try {
    const raw = JSON.parse(value) as { r?: unknown; e?: unknown; g?: unknown };
    if (typeof raw.r !== 'number' || typeof raw.e !== 'number' || !Array.isArray(raw.g)) return null;
    const text = (v: unknown) => (typeof v === 'string' ? v : null);
    const guests: Guest[] = [];
    for (const g of raw.g as unknown[]) {
      if (!Array.isArray(g) || typeof g[0] !== 'number' || (g[1] !== 'l' && g[1] !== 'q')) return null;
      guests.push({
        vmid: g[0],
        type: g[1] === 'l' ? 'lxc' : 'qemu',
        name: text(g[2]),
        node: text(g[3]),
        status: text(g[4]),
      });
    }
    return { guests, refreshedAt: new Date(raw.r), expiresAt: new Date(raw.e) };
  } catch {
    return null;
  }
}

/** What changed from one ascending list of VMIDs to another: one merge, O(n). */
function changeBetween(before: readonly number[], after: readonly number[]): { added: number[]; removed: number[] } {
  const added: number[] = [];
  const removed: number[] = [];
  let i = 0;
  let j = 0;
  while (i < before.length || j < after.length) {
    const b = before[i];
    const a = after[j];
    if (a === undefined || (b !== undefined && b < a)) {
      removed.push(b!);
      i++;
    } else if (b === undefined || a < b) {
      added.push(a);
      j++;
    } else {
      i++;
      j++;
    }
  }
  return { added, removed };
}

/** `values` itself when it is ascending without duplicates already (Proxmox lists usually are), else a sorted copy. */
function ascendingUnique(values: readonly number[]): number[] {
  for (let i = 1; i < values.length; i++) {
    if (!(values[i - 1]! < values[i]!)) return [...new Set(values)].sort((a, b) => a - b);
  }
  return values as number[];
}

/** READ's taken: the kept list ("100,101,…", ascending), or the members of an older cache. */
function takenList(taken: string | string[]): number[] {
  if (typeof taken !== 'string') return taken.map(Number).sort((x, y) => x - y);
  return taken === '' ? [] : taken.split(',').map(Number);
}
