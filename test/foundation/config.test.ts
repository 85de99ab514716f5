import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';

const KEY = Buffer.alloc(32, 7).toString('base64');

describe('configuration', () => {
  it('applies the contract defaults with an empty environment (embedded mode)', () => {
    const c = loadConfig({});
    expect(c).toMatchObject({
      host: '127.0.0.1',
      port: 4000,
      databaseUrl: undefined,
      redis: undefined,
      vmidCacheTtlS: 300,
      vmidReuseHoldS: 60,
      vmidWatchIntervalS: 5,
      proxmoxTimeoutMs: 10_000,
      allowPrivateNodeHosts: true,
      allowLoopbackNodeHosts: false,
      logLevel: 'info',
      encryptionKey: undefined,
      previousEncryptionKeys: [],
    });
    expect(c.dataDir).toMatch(/\.data$/);
  });

  it.each([
    [{ PORT: 'abc' }, /PORT must be an integer/],
    [{ PORT: '70000' }, /PORT must be an integer from 0 to 65535/],
    [{ VMID_CACHE_TTL_S: '-1' }, /VMID_CACHE_TTL_S/],
    [{ VMID_REUSE_HOLD_S: '86401' }, /VMID_REUSE_HOLD_S must be an integer from 0 to 86400/],
    [{ VMID_REUSE_HOLD_S: '-1' }, /VMID_REUSE_HOLD_S/],
    [{ VMID_WATCH_INTERVAL_S: '0' }, /VMID_WATCH_INTERVAL_S must be an integer from 1 to 3600/],
    [{ VMID_WATCH_INTERVAL_S: '3601' }, /VMID_WATCH_INTERVAL_S must be an integer from 1 to 3600/],
    [{ VMID_WATCH_INTERVAL_S: '2.5' }, /VMID_WATCH_INTERVAL_S/],
    [{ PROXMOX_TIMEOUT_MS: '1.5' }, /PROXMOX_TIMEOUT_MS/],
    [{ ALLOW_LOOPBACK_NODE_HOSTS: 'maybe' }, /ALLOW_LOOPBACK_NODE_HOSTS must be true or false/],
    [{ DATABASE_URL: 'mysql://x' }, /DATABASE_URL must start with postgresql:\/\//],
    [{ REDIS_URL: 'not a url' }, /REDIS_URL is not a valid URL/],
    [{ REDIS_URL: 'http://x' }, /REDIS_URL must be redis:\/\/host:port, redis\+sentinel:\/\//],
    [{ REDIS_URL: 'redis+sentinel://127.0.0.1:26379' }, /REDIS_URL redis\+sentinel:\/\/ needs the master name/],
    [
      { REDIS_URL: 'redis+sentinel://127.0.0.1:26379/mymaster/x' },
      /REDIS_URL redis\+sentinel:\/\/ database must be a number/,
    ],
    [{ REDIS_URL: 'redis+cluster://127.0.0.1:7000,127.0.0.1:99999' }, /REDIS_URL has an invalid port/],
    [{ REDIS_URL: 'redis+cluster://127.0.0.1:7000/0' }, /REDIS_URL redis\+cluster:\/\/ takes no path/],
    // A password with an unencoded '/' lands in the host list: the message must not quote it.
    [
      { REDIS_URL: 'redis+sentinel://user:hunter/2@h:26379/m' },
      /^(?![\s\S]*hunter)[\s\S]*REDIS_URL has an invalid host/,
    ],
    [{ PVEGRAPH_FAST_PATHS: 'sometimes' }, /PVEGRAPH_FAST_PATHS must be true or false \(got "sometimes"\)/],
    [{ REDIS_URL: 'redis+cluster://127.0.0.1:7000', REDIS_KEY_PREFIX: 'app{x}:' }, /REDIS_KEY_PREFIX must not contain/],
    [{ ENCRYPTION_KEY: 'c2hvcnQ=' }, /ENCRYPTION_KEY must be 32 bytes/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL must be one of/],
    [{ DATABASE_URL: 'postgresql://localhost/x' }, /ENCRYPTION_KEY is required when DATABASE_URL is set/],
    [{ ENCRYPTION_KEY: `${KEY},${KEY}` }, /ENCRYPTION_KEY holds one key/],
  ])('stops with one line naming the variable for %o', (env, message) => {
    let error: unknown;
    try {
      loadConfig(env);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).not.toContain('\n');
  });

  it('reads REDIS_URL as one server, a Sentinel group or a Redis Cluster', () => {
    expect(loadConfig({ REDIS_URL: 'redis://:pw@127.0.0.1:6380/2' }).redis).toEqual({
      kind: 'single',
      url: 'redis://:pw@127.0.0.1:6380/2',
    });
    expect(
      loadConfig({
        REDIS_URL: 'redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2,[::1]:26380/mymaster/3?sentinelPassword=s%40',
      }).redis,
    ).toEqual({
      kind: 'sentinel',
      sentinels: [
        { host: '10.0.0.1', port: 26379 },
        { host: '10.0.0.2', port: 26379 },
        { host: '::1', port: 26380 },
      ],
      masterName: 'mymaster',
      db: 3,
      password: 'pw',
      sentinelPassword: 's@',
      tls: false,
    });
    expect(loadConfig({ REDIS_URL: 'rediss+cluster://app:pw@10.0.0.1:7000,10.0.0.2:7001' }).redis).toEqual({
      kind: 'cluster',
      nodes: [
        { host: '10.0.0.1', port: 7000 },
        { host: '10.0.0.2', port: 7001 },
      ],
      username: 'app',
      password: 'pw',
      tls: true,
    });
  });

  it('reads VMID_REUSE_HOLD_S: 0 turns the hold off, up to a day', () => {
    expect(loadConfig({ VMID_REUSE_HOLD_S: '0' }).vmidReuseHoldS).toBe(0);
    expect(loadConfig({ VMID_REUSE_HOLD_S: '86400' }).vmidReuseHoldS).toBe(86_400);
    expect(loadConfig({ VMID_REUSE_HOLD_S: '5' }).vmidReuseHoldS).toBe(5);
  });

  it('reads VMID_WATCH_INTERVAL_S: from 1 s to an hour', () => {
    expect(loadConfig({ VMID_WATCH_INTERVAL_S: '1' }).vmidWatchIntervalS).toBe(1);
    expect(loadConfig({ VMID_WATCH_INTERVAL_S: '3600' }).vmidWatchIntervalS).toBe(3_600);
  });

  it('lets commands that never touch secrets run without ENCRYPTION_KEY', () => {
    expect(
      loadConfig({ DATABASE_URL: 'postgresql://localhost/x' }, { requireEncryptionKey: false }).encryptionKey,
    ).toBeUndefined();
  });

  it('reads service mode with a key, and previous keys for rotation after the current one', () => {
    const old = Buffer.alloc(32, 1).toString('base64');
    const c = loadConfig({
      DATABASE_URL: 'postgresql://localhost/x',
      ENCRYPTION_KEY: KEY,
      ENCRYPTION_KEYS_PREVIOUS: old,
      ALLOW_LOOPBACK_NODE_HOSTS: 'true',
    });
    expect(c.encryptionKey?.toString('base64')).toBe(KEY);
    expect(c.previousEncryptionKeys.map((k) => k.toString('base64'))).toEqual([old]);
    expect(c.allowLoopbackNodeHosts).toBe(true);
  });
});
