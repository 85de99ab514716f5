/**
 * The Lua scripts of RedisVmidStore. Each runs atomically in Redis, so "check, change, bump
 * the version, publish the event" is one step: two instances never reserve the same VMID, and
 * events leave Redis in version order. Time comes from Redis (TIME), not from the instances,
 * so expiries do not depend on their clocks.
 *
 * Keys of one node (nodeId in braces: one Redis Cluster hash slot per node):
 *   vmid-cache:{id}         SET of taken VMIDs (absent when the set is empty)  TTL
 *   vmid-meta:{id}          HASH refreshedAt, expiresAt (ms) — marks "cached" — and list
 *                           (the set ascending, comma-separated: what READ answers) with
 *                           listAt/listCard (the refreshedAt and size it was made for)  TTL
 *   vmid-reservations:{id}  ZSET vmid → expiry (ms); expires with its last member
 *   vmid-version:{id}       HASH version, digest (of the last announced set),
 *                           epoch (bumped by invalidations) — never expires, except as a
 *                           deleted node's tombstone (deleted=1, kept a day: FORGET)
 *   vmid-cache-tmp:{id}     scratch SET, only inside vmid_refresh
 *   vmid-lock:{id}          fill lock (SET NX PX)
 */

const COMMON = `
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function int(n)
  return string.format('%d', n)
end
-- Bumps the node's version and publishes the event in the same atomic step.
-- node_json is the JSON-encoded node id; vmids_json a JSON array or 'null'; extra_json ''
-- or more members of the event (',"expiresAt":…').
local function bump(state_key, channel, node_json, kind, vmids_json, now, extra_json)
  local v = redis.call('HINCRBY', state_key, 'version', 1)
  redis.call('PUBLISH', channel, '{"nodeId":' .. node_json .. ',"kind":"' .. kind .. '","version":' .. int(v) ..
    ',"at":' .. int(now) .. ',"vmids":' .. vmids_json .. (extra_json or '') .. '}')
  return v
end
-- Ends the reservations whose time is up. A lapse is a change like a release: if any lapsed,
-- the version grows by one and one RELEASED event carries them all, ascending.
local function lapse(reservations_key, state_key, channel, node_json, now)
  local due = redis.call('ZRANGEBYSCORE', reservations_key, '-inf', now)
  if #due == 0 then return end
  redis.call('ZREMRANGEBYSCORE', reservations_key, '-inf', now)
  local ids = {}
  for i, v in ipairs(due) do ids[i] = tonumber(v) end
  table.sort(ids)
  for i, n in ipairs(ids) do ids[i] = int(n) end
  bump(state_key, channel, node_json, 'RELEASED', '[' .. table.concat(ids, ',') .. ']', now)
end
-- A reservation set outlives its last member by a day, so a lapse nobody was watching is
-- still found (and announced) by the next script that looks, instead of vanishing with the key.
local LAPSE_GRACE_MS = 86400000
-- A deleted node's version hash stays this long as its tombstone (FORGET), so what was on
-- its way when the node was deleted (a fill, an invalidation through an instance that still
-- had the node's ownership cached, a subscriber catching up after an outage) learns of it.
local TOMBSTONE_MS = 86400000
local function deleted(state_key)
  return redis.call('HEXISTS', state_key, 'deleted') == 1
end
`;

/**
 * KEYS: cache, meta, reservations, state
 * ARGV: channel, nodeJson
 * → { version, now, reservations(flat vmid, expiry…), refreshedAt|'', expiresAt|'', taken }
 * Announces lapsed reservations first (a read never shows a lapse without its version).
 * taken: the ascending comma-separated list kept in meta (one string to send and parse, on
 * the hot path), or the unordered members when there is no list or it may be stale: an
 * instance of an earlier version (during a rolling upgrade) refreshes or consumes without
 * keeping the list, which changes refreshedAt or the set's size.
 */
export const READ = `${COMMON}
local now = now_ms()
lapse(KEYS[3], KEYS[4], ARGV[1], ARGV[2], now)
local meta = redis.call('HMGET', KEYS[2], 'refreshedAt', 'expiresAt', 'list', 'listAt', 'listCard')
local version = redis.call('HGET', KEYS[4], 'version') or '0'
local reserved = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
if not meta[1] then
  return { version, int(now), reserved, '', '', {} }
end
local list = meta[3]
if list and (meta[4] ~= meta[1] or tonumber(meta[5]) ~= redis.call('SCARD', KEYS[1])) then
  list = false
end
return { version, int(now), reserved, meta[1], meta[2], list or redis.call('SMEMBERS', KEYS[1]) }
`;

/**
 * KEYS: cache, meta, state, tmp, reservations
 * ARGV: ttlMs, expectedEpoch ('' = unconditional), channel, nodeJson, vmid… (ascending, unique)
 * → { 'STALE', version } | { 'GONE' } (the node was deleted) | { 'OK', changed(0|1), version, refreshedAt, expiresAt, reservations(flat vmid, expiry…) }
 * The caller sorts (cheaper outside Redis's one thread); the digest is of that canonical list.
 */
export const REFRESH = `${COMMON}
if deleted(KEYS[3]) then return { 'GONE' } end
local epoch = redis.call('HGET', KEYS[3], 'epoch') or '0'
if ARGV[2] ~= '' and epoch ~= ARGV[2] then
  return { 'STALE', redis.call('HGET', KEYS[3], 'version') or '0' }
end
local now = now_ms()
lapse(KEYS[5], KEYS[3], ARGV[3], ARGV[4], now)
redis.call('DEL', KEYS[4])
local n = #ARGV
-- unpack() has a stack limit: add in chunks.
for i = 5, n, 1000 do
  redis.call('SADD', KEYS[4], unpack(ARGV, i, math.min(i + 999, n)))
end
local joined = table.concat(ARGV, ',', 5, n)
local expires_at = now + tonumber(ARGV[1])
if n >= 5 then
  redis.call('RENAME', KEYS[4], KEYS[1])
  redis.call('PEXPIREAT', KEYS[1], expires_at)
else
  redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[2], 'refreshedAt', int(now), 'expiresAt', int(expires_at),
  'list', joined, 'listAt', int(now), 'listCard', int(n - 4))
redis.call('PEXPIREAT', KEYS[2], expires_at)
local digest = redis.sha1hex(joined)
local changed = 0
local version
if redis.call('HGET', KEYS[3], 'digest') ~= digest then
  redis.call('HSET', KEYS[3], 'digest', digest)
  version = bump(KEYS[3], ARGV[3], ARGV[4], 'REFRESHED', '[' .. joined .. ']', now)
  changed = 1
else
  version = redis.call('HGET', KEYS[3], 'version') or '0'
end
local reserved = redis.call('ZRANGE', KEYS[5], 0, -1, 'WITHSCORES')
return { 'OK', changed, int(version), int(now), int(expires_at), reserved }
`;

/**
 * KEYS: cache, meta, state
 * ARGV: channel, nodeJson
 * → { existed(0|1), version } | { -1, version } (the node was deleted: nothing done)
 */
export const INVALIDATE = `${COMMON}
if deleted(KEYS[3]) then return { -1, tonumber(redis.call('HGET', KEYS[3], 'version') or '0') } end
local now = now_ms()
local existed = redis.call('EXISTS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HDEL', KEYS[3], 'digest')
redis.call('HINCRBY', KEYS[3], 'epoch', 1)
local v = bump(KEYS[3], ARGV[1], ARGV[2], 'INVALIDATED', 'null', now)
return { existed, v }
`;

/**
 * KEYS: cache, meta, reservations, state
 * ARGV: vmid ('' = lowest free ≥ min), min, ttlMs, channel, nodeJson, maxVmid
 * → { 'OK', vmid, expiresAt, version } | { 'MISS' } | { 'TAKEN', vmid } | { 'RESERVED', vmid } | { 'EXHAUSTED' }
 *
 * Without a vmid: one pass over the taken and reserved ids ≥ min builds a lookup table, then
 * the first gap is found in at most (taken + reserved + 1) steps — O(taken + reserved).
 */
export const RESERVE = `${COMMON}
if redis.call('EXISTS', KEYS[2]) == 0 then
  return { 'MISS' }
end
local now = now_ms()
lapse(KEYS[3], KEYS[4], ARGV[4], ARGV[5], now)
local vmid
if ARGV[1] ~= '' then
  vmid = tonumber(ARGV[1])
  if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return { 'TAKEN', vmid } end
  if redis.call('ZSCORE', KEYS[3], ARGV[1]) then return { 'RESERVED', vmid } end
else
  local min = tonumber(ARGV[2])
  local used = {}
  for _, v in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local n = tonumber(v)
    if n >= min then used[n] = true end
  end
  for _, v in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    local n = tonumber(v)
    if n >= min then used[n] = true end
  end
  vmid = min
  while used[vmid] do vmid = vmid + 1 end
  if vmid > tonumber(ARGV[6]) then return { 'EXHAUSTED' } end
end
local expires_at = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[3], expires_at, int(vmid))
local last = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[3], int(tonumber(last[2]) + LAPSE_GRACE_MS))
local v = bump(KEYS[4], ARGV[4], ARGV[5], 'RESERVED', '[' .. int(vmid) .. ']', now, ',"expiresAt":' .. int(expires_at))
return { 'OK', vmid, int(expires_at), v }
`;

/**
 * KEYS: reservations, state
 * ARGV: vmid, channel, nodeJson
 * → 1 | 0
 */
export const RELEASE = `${COMMON}
local now = now_ms()
lapse(KEYS[1], KEYS[2], ARGV[2], ARGV[3], now)
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
if removed == 1 then
  bump(KEYS[2], ARGV[2], ARGV[3], 'RELEASED', '[' .. ARGV[1] .. ']', now)
end
return removed
`;

/**
 * KEYS: cache, meta, reservations, state
 * ARGV: vmid, channel, nodeJson
 * → { released(0|1), added(0|1) }
 */
export const CONSUME = `${COMMON}
local now = now_ms()
lapse(KEYS[3], KEYS[4], ARGV[2], ARGV[3], now)
local released = redis.call('ZREM', KEYS[3], ARGV[1])
local expires_at = redis.call('HGET', KEYS[2], 'expiresAt')
local added = 0
if expires_at then
  added = redis.call('SADD', KEYS[1], ARGV[1])
  redis.call('PEXPIREAT', KEYS[1], expires_at)
end
if added == 1 then
  local joined = table.concat(redis.call('SORT', KEYS[1]), ',')
  redis.call('HSET', KEYS[2], 'list', joined, 'listAt', redis.call('HGET', KEYS[2], 'refreshedAt'),
    'listCard', redis.call('SCARD', KEYS[1]))
  redis.call('HSET', KEYS[4], 'digest', redis.sha1hex(joined))
  bump(KEYS[4], ARGV[2], ARGV[3], 'REFRESHED', '[' .. joined .. ']', now)
elseif released == 1 then
  bump(KEYS[4], ARGV[2], ARGV[3], 'RELEASED', '[' .. ARGV[1] .. ']', now)
end
return { released, added }
`;

/**
 * KEYS: reservations, state
 * ARGV: channel, nodeJson
 * → { now, next expiry | '' }
 * Announces the lapsed reservations (see lapse) and tells when the next one is due, in
 * Redis's time, so the caller's timer does not depend on its own clock.
 */
export const EXPIRE_DUE = `${COMMON}
local now = now_ms()
lapse(KEYS[1], KEYS[2], ARGV[1], ARGV[2], now)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return { int(now), first[2] or '' }
`;

/** KEYS: lock; ARGV: token. Deletes the lock only if it is still ours. */
export const UNLOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`;

/**
 * KEYS: cache, meta, reservations, state, tmp, lock
 * ARGV: channel, nodeJson
 * → version of the DELETED event
 * The node was deleted: its last event, numbered after its last change; every key goes but
 * the version hash, which stays a day as a tombstone: REFRESH and INVALIDATE refuse to act
 * on it (nothing is re-created, no event follows DELETED), and a subscriber that reads it is
 * told DELETED. Reservations due but not yet announced end without a RELEASED: DELETED
 * covers them. A second FORGET does nothing.
 */
export const FORGET = `${COMMON}
if deleted(KEYS[4]) then return tonumber(redis.call('HGET', KEYS[4], 'version')) end
local v = bump(KEYS[4], ARGV[1], ARGV[2], 'DELETED', 'null', now_ms())
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6])
redis.call('HDEL', KEYS[4], 'digest')
redis.call('HSET', KEYS[4], 'deleted', '1')
redis.call('PEXPIRE', KEYS[4], TOMBSTONE_MS)
return v
`;
