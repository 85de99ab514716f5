import type { Logger } from 'pino';
import { type ConnectionWatch, isCluster, type RedisClient } from '../redis/redis.js';
import { CacheUnavailableError } from './errors.js';

type Listener = { onMessage: (message: string) => void; onResync?: (() => void) | undefined };

/** Told of when messages may be lost and when they are received again (see watchDelivery). */
export interface DeliveryWatcher {
  /** Messages of the subscribed channels are received from now on. */
  onLive(): void;
  /** The connection closed: messages are lost until the next onLive. */
  onLost(): void;
}

/** Told of every message of a pattern, and of when they may be lost (see watchPattern). */
export interface PatternWatcher {
  onMessage(message: string): void;
  /** Redis confirmed the pattern: messages are received from now on. */
  onLive(): void;
  /** The connection closed: messages are lost until the next onLive. */
  onLost(): void;
}

interface Channel {
  listeners: Set<Listener>;
  /** Settles when Redis confirmed the SUBSCRIBE. */
  subscribed: Promise<void>;
}

/**
 * One Redis SUBSCRIBE per channel per process, fanned out to any number of local listeners:
 * 10,000 GraphQL subscriptions of one user on one instance are one Redis subscription.
 *
 * Uses its own connection (a connection in subscriber mode cannot run other commands).
 * ioredis re-subscribes by itself after a reconnect (autoResubscribe); messages published
 * while the connection was down are lost, so listeners are told to resync once the
 * subscriptions are active again.
 *
 * On a Redis Cluster the channels are sharded (SSUBSCRIBE): ioredis keeps one subscriber
 * connection per shard master (`shardedSubscribers`) and, when a master dies and its replica
 * is promoted, re-subscribes at the new master once it knows the new topology
 * ('subscribersReady'). Until the hub has subscribed every channel again itself (Redis
 * confirms a repeated SSUBSCRIBE without subscribing twice), the channels count as lost;
 * then listeners resync. Patterns do not exist for sharded channels (watchPattern refuses).
 */
export class RedisEventHub {
  private readonly channels = new Map<string, Channel>();
  /**
   * Channels whose UNSUBSCRIBE failed (connection down): ioredis would re-subscribe them on
   * reconnect, so they are unsubscribed again once the connection is back.
   */
  private readonly stale = new Set<string>();
  private lost = false;
  private watch: { pattern: string; watcher: PatternWatcher; live: boolean; confirming: boolean } | null = null;
  private readonly deliveryWatchers = new Set<DeliveryWatcher>();
  /** SSUBSCRIBE/SMESSAGE on a Redis Cluster. */
  readonly sharded: boolean;

  constructor(
    private readonly subscriber: RedisClient,
    private readonly connection: ConnectionWatch,
    private readonly log?: Logger,
  ) {
    this.sharded = isCluster(subscriber);
    subscriber.on(this.sharded ? 'smessage' : 'message', (channel: string, message: string) => {
      const entry = this.channels.get(channel);
      if (!entry) return;
      for (const listener of [...entry.listeners]) {
        try {
          listener.onMessage(message);
        } catch (err) {
          this.log?.warn({ err }, 'vmid event listener failed');
        }
      }
    });
    subscriber.on('pmessage', (pattern: string, _channel: string, message: string) => {
      if (this.watch?.pattern === pattern) this.watch.watcher.onMessage(message);
    });
    if (this.sharded) {
      this.followShards();
      return;
    }
    subscriber.on('close', () => {
      this.lost = true;
      for (const w of this.deliveryWatchers) w.onLost();
      if (this.watch) {
        this.watch.live = false;
        this.watch.watcher.onLost();
      }
    });
    subscriber.on('ready', () => {
      // The pattern is confirmed by its own PSUBSCRIBE's answer: after a reconnect, and after
      // a first PSUBSCRIBE that failed without a close (its wait for 'ready' timed out).
      if (this.watch && !this.watch.live) this.confirmPattern();
      if (!this.lost) return;
      this.lost = false;
      // ioredis emits 'ready' before it re-sends the SUBSCRIBEs; a PING sent after them is
      // answered after them, so when it returns the channels are live again.
      setImmediate(() => {
        subscriber
          .ping()
          .then(() => {
            this.retryStale();
            for (const w of this.deliveryWatchers) w.onLive();
            for (const entry of this.channels.values()) for (const l of [...entry.listeners]) l.onResync?.();
          })
          .catch((err: unknown) => this.log?.warn({ err }, 'vmid events: resubscribe check failed'));
      });
    });
  }

  /**
   * A cluster's shard subscribers: one that ends (its master died, or the topology changed)
   * loses its channels' messages until ioredis has a subscriber at the slot's master again.
   */
  private followShards(): void {
    const sub = this.subscriber;
    const lose = () => {
      if (this.lost) return;
      this.lost = true;
      for (const w of this.deliveryWatchers) w.onLost();
    };
    sub.on('-subscriber', lose);
    sub.on('subscribersReady', () => {
      if (!this.lost) return;
      const channels = [...this.channels.keys()];
      // ioredis sends the SSUBSCRIBEs without waiting for them; ours are answered once the
      // channels are subscribed at the new masters. If one fails (the slot not served yet),
      // the next 'subscribersReady' (ioredis retries) tries again.
      Promise.all(channels.map((channel) => this.subscribe(channel)))
        .then(() => {
          this.retryStale();
          if (!this.lost) return;
          this.lost = false;
          for (const w of this.deliveryWatchers) w.onLive();
          for (const entry of this.channels.values()) for (const l of [...entry.listeners]) l.onResync?.();
        })
        .catch((err: unknown) =>
          this.log?.info(
            { err: { message: (err as Error).message } },
            'vmid events: shard not back yet; resubscribed when ioredis finds its master',
          ),
        );
    });
  }

  private subscribe(channel: string): Promise<unknown> {
    return this.sharded ? this.subscriber.ssubscribe(this.unprefixed(channel)) : this.subscriber.subscribe(channel);
  }

  /**
   * ioredis treats a sharded channel as a key and puts the connection's keyPrefix before it
   * (plain channels it leaves alone): hand it the name without. Messages arrive under the
   * full name, which is what the channels here are named by.
   */
  private unprefixed(channel: string): string {
    const prefix = this.subscriber.options.keyPrefix ?? '';
    return channel.startsWith(prefix) ? channel.slice(prefix.length) : channel;
  }

  /**
   * Tells `watcher` when messages of the subscribed channels may have been lost (onLost) and
   * when they are received again (onLive, after every channel is subscribed again). It is
   * told onLive at once when the connection is up. The returned function stops telling.
   */
  watchDelivery(watcher: DeliveryWatcher): () => void {
    this.deliveryWatchers.add(watcher);
    this.whenReady().then(
      () => {
        if (this.deliveryWatchers.has(watcher) && !this.lost) watcher.onLive();
      },
      () => undefined,
    );
    return () => {
      if (this.deliveryWatchers.delete(watcher)) watcher.onLost();
    };
  }

  /**
   * Hands `watcher` every message of the channels matching `pattern` (one PSUBSCRIBE; one
   * watcher per hub). onLive follows Redis's confirmation, at first and after every
   * reconnect; onLost follows every close. The returned function stops watching.
   */
  watchPattern(pattern: string, watcher: PatternWatcher): () => void {
    if (this.watch) throw new Error('RedisEventHub: a pattern is watched already');
    if (this.sharded) throw new Error('RedisEventHub: a Redis Cluster has no patterns for sharded channels');
    const watch = { pattern, watcher, live: false, confirming: false };
    this.watch = watch;
    this.confirmPattern();
    return () => {
      if (this.watch !== watch) return;
      this.watch = null;
      watcher.onLost();
      this.subscriber.punsubscribe(pattern).catch(() => undefined);
    };
  }

  /**
   * (Re)sends the PSUBSCRIBE and reports the pattern live once Redis confirms it. After a
   * reconnect ioredis re-sends it too; Redis confirms the second one without subscribing twice.
   * A failure is retried at the next 'ready' (until then the watcher stays lost). One at a time.
   */
  private confirmPattern(): void {
    const watch = this.watch;
    if (!watch || watch.confirming) return;
    watch.confirming = true;
    this.whenReady()
      .then(() => this.subscriber.psubscribe(watch.pattern))
      .finally(() => {
        watch.confirming = false;
      })
      .then(() => {
        if (this.watch !== watch || this.subscriber.status !== 'ready' || watch.live) return;
        watch.live = true;
        watch.watcher.onLive();
      })
      .catch((err: unknown) =>
        this.log?.warn(
          { err: { message: (err as Error).message } },
          'vmid events: pattern subscription failed; retried on reconnect',
        ),
      );
  }

  /** Resolves once the subscriber connection can take SUBSCRIBE (bounded: 5 s). */
  private whenReady(): Promise<void> {
    const sub = this.subscriber;
    if (sub.status === 'ready') return Promise.resolve();
    if (sub.status === 'wait') sub.connect().catch(() => undefined);
    return new Promise((resolve, reject) => {
      const onReady = () => {
        clearTimeout(timer);
        resolve();
      };
      const timer = setTimeout(() => {
        sub.off('ready', onReady);
        reject(new Error('Redis subscriber connection not ready'));
      }, 5_000);
      sub.once('ready', onReady);
    });
  }

  /** Resolves once the channel is subscribed in Redis; the returned function stops listening. */
  async listen(channel: string, onMessage: (message: string) => void, onResync?: () => void): Promise<() => void> {
    const listener: Listener = { onMessage, onResync };
    if (this.connection.down()) throw unavailable();
    let entry = this.channels.get(channel);
    if (!entry) {
      this.stale.delete(channel);
      const created: Channel = {
        listeners: new Set(),
        // SUBSCRIBE sent during the subscriber connection's own handshake fails in ioredis ≥ 5.8
        // ("Connection in subscriber mode…", ioredis#2037): wait until it is ready.
        subscribed: this.whenReady()
          .then(() => this.subscribe(channel))
          .then(() => undefined),
      };
      entry = created;
      this.channels.set(channel, created);
      // A failed SUBSCRIBE must not stay cached for later listeners.
      created.subscribed.catch(() => {
        if (this.channels.get(channel) === created && created.listeners.size === 0) this.channels.delete(channel);
      });
    }
    entry.listeners.add(listener);
    try {
      await entry.subscribed;
    } catch (err) {
      this.remove(channel, entry, listener);
      throw unavailable(err);
    }
    let active = true;
    const current = entry;
    return () => {
      if (!active) return;
      active = false;
      this.remove(channel, current, listener);
    };
  }

  private remove(channel: string, entry: Channel, listener: Listener): void {
    entry.listeners.delete(listener);
    if (entry.listeners.size > 0 || this.channels.get(channel) !== entry) return;
    this.channels.delete(channel);
    // Redis handles commands of one connection in order: a later SUBSCRIBE of the same
    // channel (a new first listener) still wins over this UNSUBSCRIBE.
    this.unsubscribe(channel);
  }

  /**
   * Unsubscribes that failed while the connection was down: the reconnect subscribed their
   * channels again (ioredis re-sends what it had), though nobody listens any more.
   */
  private retryStale(): void {
    for (const channel of [...this.stale]) {
      this.stale.delete(channel);
      if (!this.channels.has(channel)) this.unsubscribe(channel);
    }
  }

  private unsubscribe(channel: string): void {
    (this.sharded
      ? this.subscriber.sunsubscribe(this.unprefixed(channel))
      : this.subscriber.unsubscribe(channel)
    ).catch(() => {
      if (!this.channels.has(channel)) this.stale.add(channel);
    });
  }

  /** Local listeners, for tests and metrics. */
  listenerCount(channel?: string): number {
    if (channel !== undefined) return this.channels.get(channel)?.listeners.size ?? 0;
    let n = 0;
    for (const entry of this.channels.values()) n += entry.listeners.size;
    return n;
  }

  channelCount(): number {
    return this.channels.size;
  }
}

const unavailable = (cause?: unknown) =>
  new CacheUnavailableError('Cannot subscribe to VMID events: Redis cannot be reached; try again shortly.', cause);
