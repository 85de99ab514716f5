import { withDefinitionsUsed } from './lua-definitions.js';
import { EVENT_LOG_KEEP } from './store.js';

/**
 * The Lua scripts of RedisVmidStore. Each runs atomically in Redis, so "check, change, bump
 * the version, publish the event" is one step: two instances never reserve the same VMID, and
 * events leave Redis in version order. Time comes from Redis (TIME), not from the instances,
 * so expiries do not depend on their clocks.
 *
 * Keys of one node (nodeId in braces: one Redis Cluster hash slot per node). Every script but
 * UNLOCK, REVIVE and EVENTS_AFTER is given all of them, in this order (KEYS[1…11], named
 * K.cache … K.log in Lua):
 *   vmid-cache:{id}         SET of taken VMIDs (absent when the set is empty); kept up to
 *                           RETAIN_MS past meta for the next fill, trusted only with meta
 *   vmid-meta:{id}          HASH refreshedAt, expiresAt (ms) — marks "cached" — and list
 *                           (the set ascending, comma-separated: what READ answers) with
 *                           listAt/listCard (the refreshedAt and size it was made for), and
 *                           usedAt (the refreshedAt the used index was built for), and
 *                           dense ('from:to': every VMID in [from, to) is in the used index,
 *                           see "The dense hint")  TTL
 *   vmid-reservations:{id}  ZSET vmid → expiry (ms); expires with its last member
 *   vmid-version:{id}       HASH version, digest (of the last announced set),
 *                           epoch (bumped by invalidations), seeded (see SEED), usedSeed
 *                           (when SEED began building the used index, see build_used),
 *                           usedBuilt (when the used index was last built whole), replid
 *                           (the master it was last written on: followMaster) — never
 *                           expires, except as a deleted node's tombstone (deleted=1, kept
 *                           a day: FORGET; a space registered again is revived: REVIVE)
 *   vmid-cache-tmp:{id}     scratch SET, only inside vmid_refresh
 *   vmid-lock:{id}          fill lock (SET NX PX)
 *   vmid-used:{id}          ZSET vmid → vmid: taken ∪ reserved ∪ held, the index the lowest
 *                           free VMID is found in by binary search (lowest_free). Kept with the
 *                           set (RETAIN_MS), moved by each fill, built whole by a fill
 *                           without a set to move and by the first fill RETAIN_MS after
 *                           its last whole build (usedBuilt)  TTL
 *   vmid-owners:{id}        HASH vmid → user id holding the reservation; expires with the
 *                           reservations
 *   vmid-held:{id}          ZSET vmid → until (ms): VMIDs that left the used set lately (the
 *                           reuse hold, see hold()); kept a day past its latest hold
 *   vmid-log:{id}           ZSET version → event (as published): the space's last
 *                           EVENT_LOG_KEEP events, for subscribers that resume (EVENTS_AFTER);
 *                           a day past the last one; FORGET keeps it (DELETED is in it)
 *   vmid-last:{id}          STRING the taken set as last written (ascending, comma-separated),
 *                           kept as long as the space (FORGET ends it): what a fill compares
 *                           with for REFRESHED's added/removed and the guests that went, also
 *                           when the cache had expired or was invalidated (meta is gone then)
 *
 * A VMID can be both taken and reserved (reserved, then listed by Proxmox before it is
 * consumed): a reservation that ends leaves the used index only if the VMID is not taken, and
 * a fill puts every live reservation back.
 */

const DEFINITIONS = `
local K = { cache = KEYS[1], meta = KEYS[2], reservations = KEYS[3], state = KEYS[4], tmp = KEYS[5],
  lock = KEYS[6], used = KEYS[7], owners = KEYS[8], held = KEYS[9], last = KEYS[10], log = KEYS[11] }
-- VMID_REUSE_HOLD_S in ms, set from its ARGV by each script that can free a VMID (0: no hold).
local HOLD_MS = 0
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
-- The event is also kept in the space's log (score = version) for subscribers that resume
-- (EVENTS_AFTER): the last ${EVENT_LOG_KEEP} events, the key a day past the last one.
local function bump(state_key, channel, node_json, kind, vmids_json, now, extra_json)
  local v = redis.call('HINCRBY', state_key, 'version', 1)
  local message = '{"nodeId":' .. node_json .. ',"kind":"' .. kind .. '","version":' .. int(v) ..
    ',"at":' .. int(now) .. ',"vmids":' .. vmids_json .. (extra_json or '') .. '}'
  redis.call('PUBLISH', channel, message)
  redis.call('ZADD', K.log, v, message)
  -- Ranks past the log's start remove nothing: no ZCARD first (one call less per event).
  redis.call('ZREMRANGEBYRANK', K.log, 0, -${EVENT_LOG_KEEP + 1})
  redis.call('PEXPIRE', K.log, 86400000)
  return v
end
-- The dense hint (meta field dense, 'from:to'): every VMID in [from, to) is in the used index,
-- so a search from anywhere in there starts at to. Without it, each RESERVE would walk and
-- binary-search the run of used VMIDs above min (thousands, once reservations pile up) to find
-- where the previous one stopped. RESERVE sets it; it goes whenever a VMID leaves the index
-- (unuse), the index is rebuilt (build_used) or the set is filled (REFRESH), and with meta.
-- Before a search trusts it, the index is checked to hold every VMID of its run (use_index):
-- one the index lost otherwise (an earlier version's script took it out, the key was evicted)
-- would be skipped.
local DENSE_FROM, DENSE_TO = nil, nil
local dense_dropped = false
local function drop_dense()
  if not dense_dropped then redis.call('HDEL', K.meta, 'dense') end
  dense_dropped = true
  DENSE_FROM, DENSE_TO = nil, nil
end
-- Where a search for the lowest free VMID >= min may start.
local function past_dense(min)
  if DENSE_FROM and DENSE_FROM <= min and min < DENSE_TO then return DENSE_TO end
  return min
end
-- vmid (a canonical decimal string) may leave the used index: it does unless a guest has it.
local function unuse(vmid)
  if redis.call('SISMEMBER', K.cache, vmid) == 0 and redis.call('ZREM', K.used, vmid) == 1 then drop_dense() end
end
-- The held set outlives its latest hold by a day (as the reservations do), longer than a used
-- index built while a hold was on can live (VMID_CACHE_TTL_S <= 86,400): a hold that ended
-- unnoticed is still found and swept out of the index (sweep_holds).
local HELD_GRACE_MS = 86400000
-- The members of a REFRESHED event that say what changed: VMIDs that became taken and that
-- stopped being taken (canonical decimal strings, ascending). The whole set does not travel.
local function delta(added, removed)
  return ',"added":[' .. table.concat(added, ',') .. '],"removed":[' .. table.concat(removed, ',') .. ']'
end
-- Whether the held set has members, as far as this script knows (nil: not asked yet): a search
-- checks every answer against it, and it is empty most of the time.
local HELD_ANY = nil
local function any_held()
  if HELD_ANY == nil then HELD_ANY = redis.call('EXISTS', K.held) == 1 end
  return HELD_ANY
end
-- ids (canonical decimal strings) left the used set at now: a guest is gone, or a reservation
-- ended. With a hold they are held until now + HOLD_MS (Proxmox may still be deleting the
-- guest): they stay in, or go into, the used index, so the lowest free VMID skips them at no
-- cost, until sweep_holds takes them out. An explicit reservation is not refused for a hold.
local function hold(ids, now)
  if HOLD_MS <= 0 or #ids == 0 then return end
  HELD_ANY = true
  local until_ms = int(now + HOLD_MS)
  local args = {}
  for _, id in ipairs(ids) do
    args[#args + 1] = until_ms
    args[#args + 1] = id
    if #args >= 2000 then
      redis.call('ZADD', K.held, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call('ZADD', K.held, unpack(args)) end
  local latest = redis.call('ZRANGE', K.held, -1, -1, 'WITHSCORES')
  redis.call('PEXPIREAT', K.held, int(tonumber(latest[2]) + HELD_GRACE_MS))
end
-- A reservation of vmid ended: held (it stays in the used index, where the reservation had
-- put it) or, without a hold, out of the index unless a guest has it too.
local function unreserve(vmid, now)
  if HOLD_MS > 0 then hold({ vmid }, now) else unuse(vmid) end
end
-- Holds that ended by now leave the held set, and their VMIDs the used index unless a guest or
-- a reservation has them. Each hold is swept once: O(log n) per freed VMID, amortised.
local function sweep_holds(now)
  if not any_held() then return end
  local ended = redis.call('ZRANGEBYSCORE', K.held, '-inf', int(now))
  if #ended == 0 then return end
  redis.call('ZREMRANGEBYSCORE', K.held, '-inf', int(now))
  for _, id in ipairs(ended) do
    if not redis.call('ZSCORE', K.reservations, id) then unuse(id) end
  end
end
local function is_held(id, now)
  if not any_held() then return false end
  local until_ms = redis.call('ZSCORE', K.held, id)
  return until_ms and tonumber(until_ms) > now
end
-- Adds ids (canonical decimal strings, score = the id) to the used index, in chunks: unpack()
-- has a stack limit.
local function add_used(ids, first, last)
  local args = {}
  for i = first, last do
    args[#args + 1] = ids[i]
    args[#args + 1] = ids[i]
    if #args >= 2000 then
      redis.call('ZADD', K.used, unpack(args))
      args = {}
    end
  end
  if #args > 0 then redis.call('ZADD', K.used, unpack(args)) end
end
-- The cached set and the used index outlive the cache (meta) by up to RETAIN_MS after their
-- fill (or the cache's own lifetime, when longer), so the next fill after the cache expired or
-- was invalidated can move them by what changed (REFRESH_DELTA) instead of writing them whole: O(n) for a large
-- cluster, every VMID_CACHE_TTL_S of a space not refreshed before. Only meta says "cached";
-- nothing decides on the set without it. The held set and the reservations outlive their last
-- member by a day, and a fill lapses and sweeps before it moves the index on, so nothing can
-- leave them unseen while the index keeps it.
local RETAIN_MS = 43200000
local function kept_until(refreshed_at, expires_at)
  return int(math.max(tonumber(expires_at), tonumber(refreshed_at) + RETAIN_MS))
end
-- How long an index SEED builds for a space that is not cached (usedSeed: when it began) is
-- kept for the first fill: well under the day the held set and the reservations outlive their
-- last member, so nothing can have left those sets without leaving the index meanwhile (an
-- index kept longer could keep a VMID nobody holds any more, and the search trusts its members).
local SEEDED_INDEX_MS = 3600000
-- Adds reserved VMIDs (ZADD arguments: vmid, vmid, …) to the used index where there is one: the
-- set is cached, SEED is building the index for the first fill (usedSeed), or the index is
-- kept past the cache for the next fill to move on (RETAIN_MS).
local function index_reserved(cached, args)
  if #args == 0 then return end
  local since = not cached and tonumber(redis.call('HGET', K.state, 'usedSeed') or '')
  if cached or since or redis.call('EXISTS', K.used) == 1 then
    redis.call('ZADD', K.used, unpack(args))
    if since then redis.call('PEXPIREAT', K.used, int(since + SEEDED_INDEX_MS)) end
  end
end
-- Builds the used index from what it indexes: taken (the cached set, as a list), the live
-- reservations and the live holds (ended ones are dropped here); it is kept with the set.
-- usedAt records the fill it was built for. After a loss, SEED has built it from the
-- reservations it put back (usedSeed, see SEED), and the fill adds only its guests: the
-- reservations one by one were most of a first fill's time (20,000 of them: 6 to 10 ms).
-- The old index is freed by Redis's background thread (UNLINK), not inside the script.
local function build_used(taken, first, last, refreshed_at, expires_at, now)
  local since = tonumber(redis.call('HGET', K.state, 'usedSeed') or '')
  redis.call('HDEL', K.state, 'usedSeed')
  local seeded_index = since and now - since < SEEDED_INDEX_MS and redis.call('EXISTS', K.used) == 1
  drop_dense()
  if seeded_index then
    sweep_holds(now)
  else
    redis.call('UNLINK', K.used)
    local reserved = redis.call('ZRANGE', K.reservations, 0, -1)
    add_used(reserved, 1, #reserved)
  end
  add_used(taken, first, last)
  redis.call('ZREMRANGEBYSCORE', K.held, '-inf', int(now))
  local held = redis.call('ZRANGE', K.held, 0, -1)
  add_used(held, 1, #held)
  redis.call('PEXPIREAT', K.used, kept_until(refreshed_at, expires_at))
  redis.call('HSET', K.meta, 'usedAt', refreshed_at)
  redis.call('HSET', K.state, 'usedBuilt', int(now))
end
-- Ends the reservations whose time is up. A lapse is a change like a release: if any lapsed,
-- the version grows by one and one RELEASED event carries them all, ascending.
local function lapse(channel, node_json, now)
  local due = redis.call('ZRANGEBYSCORE', K.reservations, '-inf', now)
  if #due == 0 then return end
  redis.call('ZREMRANGEBYSCORE', K.reservations, '-inf', now)
  for i = 1, #due, 1000 do
    redis.call('HDEL', K.owners, unpack(due, i, math.min(i + 999, #due)))
  end
  local ids = {}
  for i, v in ipairs(due) do
    if HOLD_MS <= 0 then unuse(v) end
    ids[i] = tonumber(v)
  end
  -- Lapsed VMIDs are held like released ones (they stay in the used index meanwhile).
  hold(due, now)
  table.sort(ids)
  for i, n in ipairs(ids) do ids[i] = int(n) end
  bump(K.state, channel, node_json, 'RELEASED', '[' .. table.concat(ids, ',') .. ']', now)
end
-- The lowest VMID >= min in neither the cached set nor the reservations nor held (see hold),
-- or nil when it would exceed max. Call only while the set is cached.
--
-- Binary search over the used index by rank: its members >= min are u(0) < u(1) < …, so
-- u(i) >= min + i, equal exactly when min … min + i are all used; the answer is min + the
-- first i where they differ (or the count, when none does). O(log² n): about log n ZRANGEs
-- by rank, each O(log n) (ZRANGEBYSCORE … LIMIT offset would walk the offset).
--
-- The index is checked against what it indexes before it is trusted: it is rebuilt if the
-- set was refreshed without it (usedAt differs: a script of an earlier version, during a
-- rolling upgrade), and an answer that is taken or reserved or held all the same (such a
-- script reserved or consumed without it, or released a held VMID out of it) is added to it and
-- the search repeated. An earlier version's release can only leave an extra member: a free VMID
-- skipped until the index is next built whole (at the latest RETAIN_MS after the last time:
-- usedBuilt, see REFRESH_DELTA).
--
-- Held VMIDs are members of the index while held, so they cost the search nothing: it stays
-- O(log² n) (n: taken + reserved + held), plus sweeping the holds that ended since the last
-- search, each once (O(log n) per freed VMID, amortised). Worst case, a search after a fill
-- that dropped k guests k holds ago sweeps all k: O(k log n), once. The repeat is bounded by the
-- members an earlier version left out of the index (each is added once).
local function use_index(now, meta)
  if meta[4] then
    local from, to = string.match(meta[4], '^(%d+):(%d+)$')
    DENSE_FROM, DENSE_TO = tonumber(from), tonumber(to)
  end
  if meta[3] ~= meta[1] then
    local taken = redis.call('SMEMBERS', K.cache)
    build_used(taken, 1, #taken, meta[1], meta[2], now)
  end
  sweep_holds(now)
  if DENSE_FROM and redis.call('ZCOUNT', K.used, int(DENSE_FROM), int(DENSE_TO - 1)) ~= DENSE_TO - DENSE_FROM then
    drop_dense()
  end
end
-- Adds used VMIDs (canonical decimal strings) the index lacks, keeping its expiry (the ZADD
-- may have made the key).
local function index_used(ids)
  local args = {}
  for _, id in ipairs(ids) do
    args[#args + 1] = id
    args[#args + 1] = id
  end
  redis.call('ZADD', K.used, unpack(args))
  local meta = redis.call('HMGET', K.meta, 'refreshedAt', 'expiresAt')
  redis.call('PEXPIREAT', K.used, kept_until(meta[1], meta[2]))
end
-- Whether every one of ids (numbers) is free after all: in neither the cached set nor the
-- reservations nor held. One call per set for all of them. Any that is not is one the index
-- lacks (an earlier version's script took it out or never put it in): it is added, and the
-- caller reads the index again.
local function all_free(ids, now)
  local args = {}
  for i, n in ipairs(ids) do args[i] = int(n) end
  local taken = redis.call('SMISMEMBER', K.cache, unpack(args))
  local reserved = redis.call('ZMSCORE', K.reservations, unpack(args))
  local held = any_held() and redis.call('ZMSCORE', K.held, unpack(args))
  local missing = {}
  for i, id in ipairs(args) do
    if taken[i] == 1 or reserved[i] or (held and held[i] and tonumber(held[i]) > now) then
      missing[#missing + 1] = id
    end
  end
  if #missing == 0 then return true end
  index_used(missing)
  return false
end
-- VMIDs this script decided to reserve but has not written yet (RESERVE writes them at its
-- end, in one call per key): taken for every check meanwhile.
local PICKED = {}
-- The search itself, once use_index has run in this script.
local function search(min, max, now)
  while true do
    local base = redis.call('ZCOUNT', K.used, '-inf', '(' .. int(min))
    local lo, hi = 0, redis.call('ZCARD', K.used) - base
    while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      local at = base + mid
      if tonumber(redis.call('ZRANGE', K.used, at, at)[1]) == min + mid then lo = mid + 1 else hi = mid end
    end
    local vmid = min + lo
    if vmid > max then return nil end
    -- What this script picked is used: the index gets it now (RESERVE adds it at its end too).
    if PICKED[vmid] then index_used({ int(vmid) }) elseif all_free({ vmid }, now) then return vmid end
  end
end
-- meta: HMGET of K.meta refreshedAt, expiresAt, usedAt, dense (the caller has read it).
local function lowest_free(min, max, now, meta)
  use_index(now, meta)
  return search(past_dense(min), max, now)
end
-- Free VMIDs the last window read found and checked (ascending; see next_free), and the range
-- they were read from: every VMID in [FREE_FROM, FREE_TO) but these is used or PICKED.
local FREE, FREE_FROM, FREE_TO = {}, nil, nil
-- The same answer as lowest_free, usually much cheaper, once use_index has run in this script,
-- for a batch of searches: the first WALK members of the used index from min on are read in one
-- call (O(log n + WALK)), and the gaps among them, as many as the batch still needs (need),
-- are checked in one call per set (all_free) and kept for the batch's next searches (FREE): a
-- batch of 8 from one min costs three calls, not three per reservation. A window without a gap
-- goes on with the binary search from past it; a gap the check refutes (the index lacks a
-- member) has been added to the index by the check, and the window is read again.
local WALK = 32
local function next_free(min, max, need, now)
  -- unpack() in all_free has a stack limit; a script decides a few at a time anyway.
  need = math.min(need, WALK)
  while min <= max do
    if FREE_FROM and FREE_FROM <= min and min < FREE_TO then
      for _, n in ipairs(FREE) do
        if n >= min and not PICKED[n] then
          if n > max then return nil end
          return n
        end
      end
      min = FREE_TO
    else
      local members = redis.call('ZRANGEBYSCORE', K.used, int(min), '+inf', 'LIMIT', 0, WALK)
      local found, gap = {}, min
      -- Gaps above max are not this search's: it stops there.
      for _, m in ipairs(members) do
        m = tonumber(m)
        while gap < m and gap <= max and #found < need do
          if not PICKED[gap] then found[#found + 1] = gap end
          gap = gap + 1
        end
        if #found >= need or gap > max then break end
        gap = m + 1
      end
      -- Past the index's last member every VMID is free.
      if #members < WALK then
        while #found < need and gap <= max do
          if not PICKED[gap] then found[#found + 1] = gap end
          gap = gap + 1
        end
      end
      if #found == 0 and gap > max then return nil end
      if #found == 0 then
        -- A window without a gap: the binary search checks its own answer.
        local vmid = search(gap, max, now)
        if not vmid then return nil end
        FREE, FREE_FROM, FREE_TO = { vmid }, min, vmid + 1
      elseif all_free(found, now) then
        FREE, FREE_FROM, FREE_TO = found, min, gap
      end
    end
  end
  return nil
end
-- A reservation set outlives its last member by a day, so a lapse nobody was watching is
-- still found (and announced) by the next script that looks, instead of vanishing with the key.
local LAPSE_GRACE_MS = 86400000
-- The reservations and their owners live on until their latest one is LAPSE_GRACE_MS past.
local function keep_reservations()
  local last = redis.call('ZRANGE', K.reservations, -1, -1, 'WITHSCORES')
  if not last[2] then return end
  local keep_until = int(tonumber(last[2]) + LAPSE_GRACE_MS)
  redis.call('PEXPIREAT', K.reservations, keep_until)
  redis.call('PEXPIREAT', K.owners, keep_until)
end
-- A deleted node's version hash stays this long as its tombstone (FORGET), so what was on
-- its way when the node was deleted (a fill, an invalidation through an instance that still
-- had the node's ownership cached, a subscriber catching up after an outage) learns of it.
local TOMBSTONE_MS = 86400000
local function deleted(state_key)
  return redis.call('HEXISTS', state_key, 'deleted') == 1
end
`;

/** The error reply of a script that found its space not seeded (see COMMON). */
export const UNSEEDED_REPLY = 'PVG_UNSEEDED';

/**
 * A master that took over (Sentinel or cluster failover), restarted, or was handed the space's
 * slot has a replication id of its own: the space's state may lack the last changes announced
 * before (a replica is a few milliseconds behind). The version then goes on ${EVENT_LOG_KEEP}
 * further, so no version announced before is given again (a subscriber that resumes finds a
 * gap in the log and gets a SYNC). The id is kept in the version hash (replid); a space that
 * has none yet just takes the current one.
 */
const followMaster = (known: string) => `
do
  local replid = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)')
  local known = ${known}
  if replid and known ~= replid then
    if known then redis.call('HINCRBY', K.state, 'version', ${EVENT_LOG_KEEP}) end
    redis.call('HSET', K.state, 'replid', replid)
  end
end`;

/**
 * Every script but SEED and UNLOCK starts here: a space whose version hash lacks the seeded
 * mark may have lost reservations (Redis restarted without persistence, was flushed, failed
 * over to a replica that had not got them), so nothing is read or decided until SEED has put
 * the durable record's reservations back. The store sees the error, seeds, and tries again.
 */
const COMMON = `${DEFINITIONS}
local state_fields = redis.call('HMGET', K.state, 'seeded', 'replid')
if not state_fields[1] then return redis.error_reply('${UNSEEDED_REPLY}') end
${followMaster('state_fields[2]')}
`;
/** A script of the ones below with only the definitions it uses (see lua-definitions.ts). */
const usedOnly = (script: string) => withDefinitionsUsed(DEFINITIONS, script);

/** How long a seed in parts holds the space for its instance after its latest part (see SEED). */
export const SEED_HOLD_MS = 10_000;

/**
 * ARGV: channel, nodeJson, force ('1': also when seeded), version floor (the version goes on
 * from at least there: it never goes backwards), seed token, part index (from 0), final ('1':
 * the last part), then vmid, expiresAt (ms), owner for each reservation to put back
 * → 1 (done) | 0 (seeded already, nothing done) | -1 (another instance is seeding the space:
 * wait, then look again) | -2 (the space lost what the earlier parts put back: seed again)
 * Puts back the reservations that are still live and not there already (a reservation made
 * meanwhile by another instance wins), indexes them when the set is cached, and with the final
 * part marks the space seeded. Nothing is announced: what comes back was announced when it was
 * made.
 *
 * A space's reservations come in parts (the store's SEED_PART): one call with every one of
 * them would hold Redis for as long as they take, and a client cannot pass a few hundred
 * thousand arguments in one call. Until the final part every other script still refuses the
 * space, so nothing is decided on a part of it. The parts of one seed share a token, kept in
 * the version hash with the number of parts done (seedToken, seedParts, seedUntil): a part
 * whose predecessors are not all there (Redis lost the space between two parts: a restart, a
 * flush, a failover to a replica that had not got them all; replication keeps their order, so
 * the count tells) answers -2 and marks nothing, and the instance starts again. One instance
 * seeds a space at a time: another one's first part answers -1 until the seed ends or its
 * token is SEED_HOLD_MS past its latest part (its instance died). The store's first part
 * carries no reservation (a claim): it reads the record only once the space is its to seed.
 *
 * With force it puts back reservations a seeded space lost (a failover to a replica behind),
 * without the token: the space is seeded, and what one call puts back stands on its own; a
 * deleted space (its tombstone) gets nothing.
 */
export const SEED = usedOnly(`${DEFINITIONS}
local seeded = redis.call('HEXISTS', K.state, 'seeded') == 1
if ARGV[3] ~= '1' and seeded then return 0 end
-- Restoring into a space that lost everything would mark it seeded with one reservation.
if ARGV[3] == '1' and not seeded then return redis.error_reply('${UNSEEDED_REPLY}') end
-- A deleted space's tombstone keeps its seeded mark: what was read before the delete stays out.
if ARGV[3] == '1' and deleted(K.state) then return 0 end
local now = now_ms()
local token, part, final = ARGV[5], tonumber(ARGV[6]), ARGV[7] == '1'
if ARGV[3] ~= '1' then
  local held = redis.call('HMGET', K.state, 'seedToken', 'seedParts', 'seedUntil')
  if part == 0 then
    if held[1] and held[1] ~= token and tonumber(held[3] or '0') > now then return -1 end
  elseif held[1] ~= token or tonumber(held[2]) ~= part then
    return -2
  end
  redis.call('HSET', K.state, 'seedToken', token, 'seedParts', int(part + 1), 'seedUntil', int(now + ${SEED_HOLD_MS}))
end
local cached = redis.call('EXISTS', K.meta) == 1
-- A space that is not cached gets its used index from the parts (usedSeed: when the seed began):
-- the first fill then adds its guests to it instead of every reservation again (build_used).
-- Releases and lapses keep it meanwhile, as they keep any index; nothing reserves before a fill,
-- and REFRESH_DELTA leaves such an index to REFRESH.
if ARGV[3] ~= '1' and part == 0 and not cached then
  redis.call('UNLINK', K.used)
  redis.call('HSET', K.state, 'usedSeed', int(now))
end
-- After a loss the version goes on well past the last one recorded: changes made after that
-- record (a release, a lapse) had numbers too, and none may be given again.
local floor = tonumber(ARGV[4])
if floor > 0 then floor = floor + ${EVENT_LOG_KEEP} end
if floor > tonumber(redis.call('HGET', K.state, 'version') or '0') then
  redis.call('HSET', K.state, 'version', int(floor))
end
-- One call per key, not per reservation (each call from Lua costs about as much as its work):
-- which are there already, then every one put back at once.
local vmids = {}
for i = 8, #ARGV, 3 do vmids[#vmids + 1] = ARGV[i] end
if #vmids > 0 then
  local there = redis.call('ZMSCORE', K.reservations, unpack(vmids))
  local reserved, owned, used = {}, {}, {}
  for k, vmid in ipairs(vmids) do
    local expires_at = ARGV[6 + 3 * k]
    local back = not there[k] and tonumber(expires_at) > now
    if back then
      reserved[#reserved + 1] = expires_at
      reserved[#reserved + 1] = vmid
      owned[#owned + 1] = vmid
      owned[#owned + 1] = ARGV[7 + 3 * k]
    end
    -- Those there already are indexed too: an earlier seed of the space that did not end may
    -- have put them back before this seed's claim emptied the index.
    if back or there[k] then
      used[#used + 1] = vmid
      used[#used + 1] = vmid
    end
  end
  if #reserved > 0 then
    redis.call('ZADD', K.reservations, unpack(reserved))
    redis.call('HSET', K.owners, unpack(owned))
  end
  index_reserved(cached, used)
end
keep_reservations()
if final and ARGV[3] ~= '1' then
  redis.call('HSET', K.state, 'seeded', '1')
  redis.call('HDEL', K.state, 'seedToken', 'seedParts', 'seedUntil')
end
return 1
`);

/**
 * ARGV: channel, nodeJson, holdMs
 * → { version, now, firstExpiry|'' (of the live reservations), refreshedAt|'', expiresAt|'', taken }
 * Announces lapsed reservations first (a read never shows a lapse without its version). The
 * reservations' VMIDs are read after it by a plain ZRANGE in the same MULTI (RedisVmidStore):
 * through Lua, with their expiries, a space's 10,000 cost Redis about 6 ms.
 * taken: the ascending comma-separated list kept in meta (one string to send and parse, on
 * the hot path), or the unordered members when there is no list or it may be stale: an
 * instance of an earlier version (during a rolling upgrade) refreshes or consumes without
 * keeping the list, which changes refreshedAt or the set's size.
 */
export const READ = usedOnly(`${COMMON}
HOLD_MS = tonumber(ARGV[3]) or 0
local now = now_ms()
lapse(ARGV[1], ARGV[2], now)
local meta = redis.call('HMGET', K.meta, 'refreshedAt', 'expiresAt', 'list', 'listAt', 'listCard')
local version = redis.call('HGET', K.state, 'version') or '0'
local first = redis.call('ZRANGE', K.reservations, 0, 0, 'WITHSCORES')[2] or ''
if not meta[1] then
  return { version, int(now), first, '', '', {} }
end
local list = meta[3]
if list and (meta[4] ~= meta[1] or tonumber(meta[5]) ~= redis.call('SCARD', K.cache)) then
  list = false
end
return { version, int(now), first, meta[1], meta[2], list or redis.call('SMEMBERS', K.cache) }
`);

/**
 * How REFRESH and REFRESH_DELTA end, given digest (of the new list), added, removed, now and
 * expires_at: a set whose digest changed is announced (REFRESHED with what changed), and the
 * reply is the same.
 */
const FILL_END = `local changed = 0
local version
if redis.call('HGET', K.state, 'digest') ~= digest then
  redis.call('HSET', K.state, 'digest', digest)
  version = bump(K.state, ARGV[3], ARGV[4], 'REFRESHED', 'null', now, delta(added, removed))
  changed = 1
else
  version = redis.call('HGET', K.state, 'version') or '0'
end
local first = redis.call('ZRANGE', K.reservations, 0, 0, 'WITHSCORES')[2] or ''
return { 'OK', changed, int(version), int(now), int(expires_at), first }
`;

/**
 * How REFRESH and REFRESH_DELTA begin: a deleted space is GONE, and a fill that read the set
 * before an invalidation (its epoch) is STALE.
 */
const FILL_START = `HOLD_MS = tonumber(ARGV[5]) or 0
if deleted(K.state) then return { 'GONE' } end
local epoch = redis.call('HGET', K.state, 'epoch') or '0'
if ARGV[2] ~= '' and epoch ~= ARGV[2] then
  return { 'STALE', redis.call('HGET', K.state, 'version') or '0' }
end
`;

/**
 * ARGV: ttlMs, expectedEpoch ('' = unconditional), channel, nodeJson, holdMs, vmids (ascending,
 * unique, comma-separated: one argument, not one per VMID, is cheaper to send and parse, and it is
 * the list meta and vmid-last keep as it is)
 * → { 'STALE', version } | { 'GONE' } (the node was deleted) | { 'OK', changed(0|1), version, refreshedAt, expiresAt, firstExpiry|'' }
 * (the reservations' VMIDs: a ZRANGE after it in the same MULTI, as for READ)
 * The caller sorts (cheaper outside Redis's one thread); the digest is of that canonical list.
 * The used index is rebuilt from the new set, the live reservations and the live holds.
 * A set equal to the cached one (the usual refresh: nothing changed in Proxmox) keeps the cache
 * and its used index as they are, when both are this version's (list and usedAt made for the
 * cached set's refreshedAt, sizes agreeing: what READ and lowest_free trust too): only their
 * expiry and times move on, and holds that ended are swept out of the index. Rebuilding them
 * (SADD and ZADD of every VMID, freeing the old ones) was most of a 10,000-guest refresh's
 * time in Redis.
 *
 * The VMIDs of the set as last written (vmid-last: the previous fill, or a consume since) that
 * the new set lacks are guests that went: they are held (see hold). This works the same when
 * the cache had expired or was invalidated meanwhile (an unregistered container is invalidated,
 * then missing from the next fill): vmid-last outlives the cache, as long as the space. A fill without it
 * (the space's first, the first after a day without one, or after Redis lost its data) holds
 * nothing: whatever went, went at an unknown time, most likely long enough ago. The comparison
 * is a merge of two ascending lists, O(n), and only when the set differs from vmid-last.
 */
export const REFRESH = usedOnly(`${COMMON}
${FILL_START}local now = now_ms()
lapse(ARGV[3], ARGV[4], now)
local joined = ARGV[6]
local previous = redis.call('GET', K.last)
local meta = redis.call('HMGET', K.meta, 'refreshedAt', 'list', 'listAt', 'listCard', 'usedAt')
local same = meta[1] and meta[2] == joined and previous == joined and meta[3] == meta[1]
  and meta[5] == meta[1] and tonumber(meta[4]) == redis.call('SCARD', K.cache)
  and redis.call('EXISTS', K.used) == 1
  and now - tonumber(redis.call('HGET', K.state, 'usedBuilt') or '0') < RETAIN_MS
-- The VMIDs one by one are needed only when the set is written again.
local ids, n = {}, 0
if same then
  n = tonumber(meta[4])
else
  for id in string.gmatch(joined, '%d+') do
    n = n + 1
    ids[n] = id
  end
  redis.call('DEL', K.tmp)
  -- unpack() has a stack limit: add in chunks.
  for i = 1, n, 1000 do
    redis.call('SADD', K.tmp, unpack(ids, i, math.min(i + 999, n)))
  end
end
-- The change against the set as last written (both ascending: one merge). Nothing written
-- before (a first fill, or Redis lost it): the whole set is new. Guests gone start a hold.
local added, removed = {}, {}
if previous ~= joined then
  if previous then
    local j = 1
    for id in string.gmatch(previous, '%d+') do
      local v = tonumber(id)
      while j <= n and tonumber(ids[j]) < v do
        added[#added + 1] = ids[j]
        j = j + 1
      end
      if j <= n and tonumber(ids[j]) == v then j = j + 1 else removed[#removed + 1] = id end
    end
    for k = j, n do added[#added + 1] = ids[k] end
    hold(removed, now)
  else
    added = ids
  end
  redis.call('SET', K.last, joined)
else
end
local expires_at = now + tonumber(ARGV[1])
if same then
  redis.call('PEXPIREAT', K.cache, kept_until(now, expires_at))
elseif n >= 1 then
  -- Freed by Redis's background thread, not by RENAME inside the script.
  redis.call('UNLINK', K.cache)
  redis.call('RENAME', K.tmp, K.cache)
  redis.call('PEXPIREAT', K.cache, kept_until(now, expires_at))
else
  redis.call('DEL', K.cache)
end
redis.call('HSET', K.meta, 'refreshedAt', int(now), 'expiresAt', int(expires_at),
  'list', joined, 'listAt', int(now), 'listCard', int(n))
redis.call('PEXPIREAT', K.meta, expires_at)
drop_dense()
if same then
  -- What build_used does to an index that is right already: ended holds leave it.
  sweep_holds(now)
  redis.call('PEXPIREAT', K.used, kept_until(now, expires_at))
  redis.call('HSET', K.meta, 'usedAt', int(now))
else
  build_used(ids, 1, n, int(now), expires_at, now)
end
local digest = redis.sha1hex(joined)
${FILL_END}`);

/**
 * ARGV: ttlMs, expectedEpoch, channel, nodeJson, holdMs, vmids (as for REFRESH), then the set
 * as last written that the caller compared with (vmid-last as it read it), the VMIDs added and
 * the VMIDs removed since (each ascending, comma-separated), the new set's digest (SHA-1 of
 * vmids, as REFRESH computes it), and how many VMIDs vmid-last holds
 * → { 'FULL' } (nothing done: send the set to REFRESH) | REFRESH's replies
 * A fill that changes the set, at the cost of the change: REFRESH writes the whole set again
 * and rebuilds the used index from every guest, reservation and hold (at 10,000 guests and
 * 10,000 reservations that held Redis for about 50 ms on a 2-core machine, on every guest
 * created or destroyed in the cluster). Here the caller finds what changed against vmid-last
 * (it reads it first, outside the script), and the script applies it: the cached set, the used
 * index and meta move by the VMIDs that changed (O(d log n)), the new list is stored as it
 * came (a copy), and the event and holds are REFRESH's. It does so where REFRESH would trust
 * the cache and its index (as its unchanged case does), or, with the cache expired or
 * invalidated, where the set and index it kept (RETAIN_MS) are there, the set as large as
 * vmid-last and the index not SEED's (usedSeed); where vmid-last is still what the caller
 * compared with; and where the index was last built whole less than RETAIN_MS ago (usedBuilt:
 * a whole build drops a member the index kept but should not have, after an eviction of the
 * held set or an earlier version's script, which no move by a change would); otherwise it
 * answers FULL before it changes anything. With nothing changed, it is the fill of a set that
 * is not cached any more, kept as it is.
 */
export const REFRESH_DELTA = usedOnly(`${COMMON}
${FILL_START}local joined, previous = ARGV[6], ARGV[7]
local now = now_ms()
local meta = redis.call('HMGET', K.meta, 'refreshedAt', 'list', 'listAt', 'listCard', 'usedAt')
local card = redis.call('SCARD', K.cache)
-- Cached: the set, its list and its index are this version's, made for this fill (as REFRESH's
-- unchanged case trusts them). Not cached (expired, invalidated): the set and the index kept
-- for this fill (RETAIN_MS), the set the size of vmid-last.
if not ((meta[1] and meta[2] == previous and meta[3] == meta[1] and meta[5] == meta[1]
    and tonumber(meta[4]) == card or not meta[1] and card == tonumber(ARGV[11]))
  and card > 0 and redis.call('EXISTS', K.used) == 1 and redis.call('GET', K.last) == previous
  and redis.call('HEXISTS', K.state, 'usedSeed') == 0
  and now - tonumber(redis.call('HGET', K.state, 'usedBuilt') or '0') < RETAIN_MS) then
  return { 'FULL' }
end
local added, removed = {}, {}
for id in string.gmatch(ARGV[8], '%d+') do added[#added + 1] = id end
for id in string.gmatch(ARGV[9], '%d+') do removed[#removed + 1] = id end
local n = card + #added - #removed
-- An empty set is REFRESH's (the cache key goes).
if n < 1 then return { 'FULL' } end
lapse(ARGV[3], ARGV[4], now)
hold(removed, now)
redis.call('SET', K.last, joined)
for i = 1, #added, 1000 do
  redis.call('SADD', K.cache, unpack(added, i, math.min(i + 999, #added)))
end
for i = 1, #removed, 1000 do
  redis.call('SREM', K.cache, unpack(removed, i, math.min(i + 999, #removed)))
end
local expires_at = now + tonumber(ARGV[1])
redis.call('PEXPIREAT', K.cache, kept_until(now, expires_at))
redis.call('HSET', K.meta, 'refreshedAt', int(now), 'expiresAt', int(expires_at),
  'list', joined, 'listAt', int(now), 'listCard', int(n))
redis.call('PEXPIREAT', K.meta, expires_at)
drop_dense()
-- The index build_used would make: guests that came join it; guests that went stay while
-- held (hold put them there), else leave it unless reserved or held from before.
add_used(added, 1, #added)
if HOLD_MS <= 0 then
  for _, id in ipairs(removed) do
    if not redis.call('ZSCORE', K.reservations, id) and not is_held(id, now) then unuse(id) end
  end
end
sweep_holds(now)
redis.call('PEXPIREAT', K.used, kept_until(now, expires_at))
redis.call('HSET', K.meta, 'usedAt', int(now))
local digest = ARGV[10]
${FILL_END}`);

/**
 * ARGV: channel, nodeJson
 * → { existed(0|1), version } | { -1, version } (the node was deleted: nothing done)
 * The cache goes (meta: nothing is decided on the set until the next fill); the set and the used
 * index stay for that fill to move by what changed (RETAIN_MS), as after an expiry.
 */
export const INVALIDATE = usedOnly(`${COMMON}
if deleted(K.state) then return { -1, tonumber(redis.call('HGET', K.state, 'version') or '0') } end
local now = now_ms()
local existed = redis.call('EXISTS', K.meta)
redis.call('DEL', K.meta)
redis.call('HDEL', K.state, 'digest')
redis.call('HINCRBY', K.state, 'epoch', 1)
local v = bump(K.state, ARGV[1], ARGV[2], 'INVALIDATED', 'null', now)
return { existed, v }
`);

/**
 * ARGV: channel, nodeJson, holdMs, then for each request: vmid ('' = lowest free in
 * [min, max]), min, max, ttlMs, owner
 * → { 'MISS' } (the set is not cached: nothing decided) | one reply per request, in order:
 *   { 'OK', vmid, expiresAt, version } | { 'TAKEN', vmid } | { 'RESERVED', vmid } | { 'EXHAUSTED' }
 * The requests are decided in order, each seeing the ones before it, in one atomic step; the
 * reservations made are announced with one RESERVED event per expiry (VMIDs ascending), so a
 * batch with one TTL is one event. Without a vmid the search (next_free: the gaps in the next
 * 32 used VMIDs, found and checked once for the batch's searches, else lowest_free's
 * O(log² n)) skips held VMIDs; a request with the same
 * min as an earlier one of the batch starts after the VMID that one got (everything from min
 * up to it is used), and the first one where the dense hint says the run of used VMIDs ends
 * (it is then set to where this batch stopped). An explicit vmid is not bounded by max, nor
 * refused for a hold (it is free: the client asked for it). The reservations are written at
 * the end, one call per key: each call from Lua costs about as much as the work it does.
 * Everything the script reads once (meta, the state's seeded mark and master) is read in one
 * call.
 */
export const RESERVE = usedOnly(`${COMMON}
HOLD_MS = tonumber(ARGV[3]) or 0
local meta = redis.call('HMGET', K.meta, 'refreshedAt', 'expiresAt', 'usedAt', 'dense')
if not meta[1] then
  return { 'MISS' }
end
local now = now_ms()
lapse(ARGV[1], ARGV[2], now)
local out = {}
local ready = false
local after = {}
local first_min, first_from = nil, nil
local expiries = {}
local by_expiry = {}
-- What the batch reserves, written at the end in one call per key (ZADD, HSET, ZADD): until
-- then PICKED stands for it.
local reserved, owned, used = {}, {}, {}
-- The searches (requests without a vmid) still to decide: how many gaps a window read checks.
local searches = 0
for b = 4, #ARGV, 5 do
  if ARGV[b] == '' then searches = searches + 1 end
end
for b = 4, #ARGV, 5 do
  local want, min, max = ARGV[b], tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  local vmid
  if want ~= '' then
    vmid = tonumber(want)
    if redis.call('SISMEMBER', K.cache, want) == 1 then out[#out + 1] = { 'TAKEN', vmid }; vmid = nil
    elseif PICKED[vmid] or redis.call('ZSCORE', K.reservations, want) then out[#out + 1] = { 'RESERVED', vmid }; vmid = nil end
  else
    if not ready then
      use_index(now, meta)
      ready = true
      first_min = min
      -- The hint's run goes on below min when the search starts from it.
      first_from = past_dense(min) == min and min or DENSE_FROM
    end
    vmid = next_free(past_dense(after[min] or min), max, searches, now)
    searches = searches - 1
    if vmid then after[min] = vmid + 1 else out[#out + 1] = { 'EXHAUSTED' } end
  end
  if vmid then
    local id = int(vmid)
    local expires_at = now + tonumber(ARGV[b + 3])
    PICKED[vmid] = true
    reserved[#reserved + 1] = int(expires_at)
    reserved[#reserved + 1] = id
    owned[#owned + 1] = id
    owned[#owned + 1] = ARGV[b + 4]
    used[#used + 1] = id
    used[#used + 1] = id
    local reply = { 'OK', vmid, int(expires_at), 0 }
    out[#out + 1] = reply
    local group = by_expiry[expires_at]
    if not group then
      group = { ids = {}, replies = {} }
      by_expiry[expires_at] = group
      expiries[#expiries + 1] = expires_at
    end
    group.ids[#group.ids + 1] = vmid
    group.replies[#group.replies + 1] = reply
  end
end
if #expiries > 0 then
  redis.call('ZADD', K.reservations, unpack(reserved))
  redis.call('HSET', K.owners, unpack(owned))
  redis.call('ZADD', K.used, unpack(used))
  keep_reservations()
  redis.call('PEXPIREAT', K.used, kept_until(meta[1], meta[2]))
end
-- Everything from the first search's start (or the hint's, when it started from the hint) up to
-- where its min's searches stopped is used now: each answer was the lowest free VMID from where
-- the previous one stopped.
if first_min and after[first_min] then
  redis.call('HSET', K.meta, 'dense', int(first_from) .. ':' .. int(after[first_min]))
  dense_dropped = false
end
for _, expires_at in ipairs(expiries) do
  local group = by_expiry[expires_at]
  table.sort(group.ids)
  for i, n in ipairs(group.ids) do group.ids[i] = int(n) end
  local v = bump(K.state, ARGV[1], ARGV[2], 'RESERVED', '[' .. table.concat(group.ids, ',') .. ']', now,
    ',"expiresAt":' .. int(expires_at))
  for _, reply in ipairs(group.replies) do reply[4] = v end
end
return out
`);

/**
 * ARGV: min, max, channel, nodeJson, holdMs
 * → { 'FREE', vmid } | { 'MISS' } | { 'EXHAUSTED' }
 * What RESERVE without a vmid would pick, reserving nothing. Lapses are announced first (a
 * reservation whose time is up does not count).
 */
export const NEXT_FREE = usedOnly(`${COMMON}
HOLD_MS = tonumber(ARGV[5]) or 0
local meta = redis.call('HMGET', K.meta, 'refreshedAt', 'expiresAt', 'usedAt', 'dense')
if not meta[1] then
  return { 'MISS' }
end
local now = now_ms()
lapse(ARGV[3], ARGV[4], now)
local vmid = lowest_free(tonumber(ARGV[1]), tonumber(ARGV[2]), now, meta)
if not vmid then return { 'EXHAUSTED' } end
return { 'FREE', vmid }
`);

/**
 * ARGV: vmid, channel, nodeJson, owner, holdMs
 * → 1 | 0
 * Only the owner's reservation ends; another user's answers 0 like none would. A reservation
 * without a recorded owner (made by an earlier version, during a rolling upgrade) is anyone's.
 * The VMID released is held (see hold).
 */
export const RELEASE = usedOnly(`${COMMON}
HOLD_MS = tonumber(ARGV[5]) or 0
local now = now_ms()
lapse(ARGV[2], ARGV[3], now)
if not redis.call('ZSCORE', K.reservations, ARGV[1]) then return 0 end
local owner = redis.call('HGET', K.owners, ARGV[1])
if owner and owner ~= ARGV[4] then return 0 end
redis.call('ZREM', K.reservations, ARGV[1])
redis.call('HDEL', K.owners, ARGV[1])
unreserve(ARGV[1], now)
bump(K.state, ARGV[2], ARGV[3], 'RELEASED', '[' .. ARGV[1] .. ']', now)
return 1
`);

/**
 * ARGV: vmid, channel, nodeJson, holdMs
 * → { released(0|1), added(0|1) }
 * Whoever holds the reservation: the guest exists now (nothing is held: the VMID is not freed).
 * An added VMID joins vmid-last too, so a fill that no longer lists it holds it, and the epoch
 * grows, so a fill that read the set before it joined is not written (STALE).
 */
export const CONSUME = usedOnly(`${COMMON}
-- The kept list (ascending, comma-separated) with vmid put in its place: a binary search over
-- the list's byte offsets (O(log n) finds) and one copy, where sorting the whole set again took
-- Redis 5.5 ms at 10,000 guests.
local function list_with(list, vmid)
  if list == '' then return vmid end
  local v, last = tonumber(vmid), #list + 2
  -- Where the first VMID starting at or after byte p starts (last: none does).
  local function start_from(p)
    if p <= 1 then return 1 end
    local comma = string.find(list, ',', p - 1, true)
    return comma and comma + 1 or last
  end
  local lo, hi = 1, last
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local at = start_from(mid)
    if at == last or tonumber(string.match(list, '^%d+', at)) >= v then hi = mid else lo = mid + 1 end
  end
  local at = start_from(lo)
  if at == last then return list .. ',' .. vmid end
  return string.sub(list, 1, at - 1) .. vmid .. ',' .. string.sub(list, at)
end
HOLD_MS = tonumber(ARGV[4]) or 0
local now = now_ms()
lapse(ARGV[2], ARGV[3], now)
local released = redis.call('ZREM', K.reservations, ARGV[1])
redis.call('HDEL', K.owners, ARGV[1])
local times = redis.call('HMGET', K.meta, 'refreshedAt', 'expiresAt')
local added = 0
if times[2] then
  local keep = kept_until(times[1], times[2])
  added = redis.call('SADD', K.cache, ARGV[1])
  redis.call('PEXPIREAT', K.cache, keep)
  redis.call('ZADD', K.used, ARGV[1], ARGV[1])
  redis.call('PEXPIREAT', K.used, keep)
elseif released == 1 then
  unuse(ARGV[1])
end
if added == 1 then
  local meta = redis.call('HMGET', K.meta, 'list', 'listAt', 'refreshedAt', 'listCard')
  local card = redis.call('SCARD', K.cache)
  local joined
  if meta[1] and meta[2] == meta[3] and tonumber(meta[4]) == card - 1 then
    joined = list_with(meta[1], ARGV[1])
  else
    joined = table.concat(redis.call('SORT', K.cache), ',')
  end
  redis.call('HSET', K.meta, 'list', joined, 'listAt', meta[3], 'listCard', card)
  redis.call('HSET', K.state, 'digest', redis.sha1hex(joined))
  -- A fill that read the set (or the registered containers) before it joined is not written
  -- over it: it would drop it (a container registered meanwhile, a guest Proxmox reported).
  redis.call('HINCRBY', K.state, 'epoch', 1)
  redis.call('SET', K.last, joined)
  bump(K.state, ARGV[2], ARGV[3], 'REFRESHED', 'null', now, delta({ ARGV[1] }, {}))
elseif released == 1 then
  bump(K.state, ARGV[2], ARGV[3], 'RELEASED', '[' .. ARGV[1] .. ']', now)
end
return { released, added }
`);

/**
 * ARGV: channel, nodeJson, holdMs
 * → { now, next expiry | '' }
 * Announces the lapsed reservations (see lapse) and tells when the next one is due, in
 * Redis's time, so the caller's timer does not depend on its own clock.
 */
export const EXPIRE_DUE = usedOnly(`${COMMON}
HOLD_MS = tonumber(ARGV[3]) or 0
local now = now_ms()
lapse(ARGV[1], ARGV[2], now)
local first = redis.call('ZRANGE', K.reservations, 0, 0, 'WITHSCORES')
return { int(now), first[2] or '' }
`);

/** KEYS: lock; ARGV: token. Deletes the lock only if it is still ours. */
export const UNLOCK = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`;

/**
 * ARGV: channel, nodeJson, holdMs, then for each reservation the record refused: its vmid,
 * expiresAt (ms) and owner, and the record's live reservation of that VMID: expiresAt (ms, ''
 * for none) and owner
 * → the number ended
 * See VmidStore.settleRefused: the record's reservation takes the refused one's place in this
 * one step (the VMID is never free meanwhile, nothing is announced), or the refused one ends
 * as RELEASE ends one. A VMID holding anything else keeps it; the record's goes in where
 * there is nothing. A deleted space is left alone.
 */
export const SETTLE_REFUSED = usedOnly(`${COMMON}
HOLD_MS = tonumber(ARGV[3]) or 0
if deleted(K.state) then return 0 end
local now = now_ms()
lapse(ARGV[1], ARGV[2], now)
local cached = redis.call('EXISTS', K.meta) == 1
local ended = {}
for i = 4, #ARGV, 5 do
  local vmid = ARGV[i]
  local score = redis.call('ZSCORE', K.reservations, vmid)
  local refused = score and tonumber(score) == tonumber(ARGV[i + 1])
    and redis.call('HGET', K.owners, vmid) == ARGV[i + 2]
  local row_until = tonumber(ARGV[i + 3])
  if (refused or not score) and row_until and row_until > now then
    redis.call('ZADD', K.reservations, row_until, vmid)
    redis.call('HSET', K.owners, vmid, ARGV[i + 4])
    index_reserved(cached, { vmid, vmid })
  elseif refused then
    redis.call('ZREM', K.reservations, vmid)
    redis.call('HDEL', K.owners, vmid)
    unreserve(vmid, now)
    ended[#ended + 1] = tonumber(vmid)
  end
end
keep_reservations()
if #ended > 0 then
  table.sort(ended)
  for j, n in ipairs(ended) do ended[j] = int(n) end
  bump(K.state, ARGV[1], ARGV[2], 'RELEASED', '[' .. table.concat(ended, ',') .. ']', now)
end
return #ended
`);

/**
 * KEYS: the version hash; ARGV: seed token → 1 | 0
 * A seed that failed after its claim (the record could not be read, Redis went away between
 * parts) gives the space up at once, if the claim is still its own: the other instances need
 * not wait SEED_HOLD_MS for it to lapse.
 */
export const SEED_ABANDON = `
if redis.call('HGET', KEYS[1], 'seedToken') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'seedToken', 'seedParts', 'seedUntil')
return 1
`;

/**
 * ARGV: channel, nodeJson
 * → version of the DELETED event
 * The node was deleted: its last event, numbered after its last change; every key goes but
 * the version hash, which stays a day as a tombstone: REFRESH and INVALIDATE refuse to act
 * on it (nothing is re-created, no event follows DELETED), and a subscriber that reads it is
 * told DELETED. Reservations due but not yet announced end without a RELEASED: DELETED
 * covers them. A second FORGET does nothing.
 */
export const FORGET = usedOnly(`${COMMON}
if deleted(K.state) then return tonumber(redis.call('HGET', K.state, 'version')) end
local v = bump(K.state, ARGV[1], ARGV[2], 'DELETED', 'null', now_ms())
redis.call('UNLINK', K.cache, K.meta, K.reservations, K.tmp, K.lock, K.used, K.owners, K.held, K.last)
redis.call('HDEL', K.state, 'digest', 'usedSeed')
redis.call('HSET', K.state, 'deleted', '1')
redis.call('PEXPIRE', K.state, TOMBSTONE_MS)
return v
`);

/**
 * KEYS: the version hash (vmid-version:{id}) → 1 (revived) | 0 (not a tombstone: nothing done)
 * The space was registered again while its tombstone lasts (FORGET): it stops being one. The
 * version stays and goes on from there (versions never go backwards: the next change is
 * numbered after DELETED), the hash never expires again, and the epoch grows, so a fill that
 * read it before the deletion writes nothing. Nothing is announced: a subscriber of the new
 * registration starts with SYNC at this version.
 */
export const REVIVE = `
if redis.call('HEXISTS', KEYS[1], 'deleted') == 0 then return 0 end
redis.call('HDEL', KEYS[1], 'deleted')
redis.call('PERSIST', KEYS[1])
redis.call('HINCRBY', KEYS[1], 'epoch', 1)
return 1
`;

/**
 * → { version, epoch, deleted ('1' or false) }
 * The space's state as the other scripts see it: read after the seeded check and after a new
 * master's version step (followMaster), so a version read right after a failover is never
 * one announced before.
 */
export const STATE = usedOnly(`${COMMON}
return redis.call('HMGET', K.state, 'version', 'epoch', 'deleted')
`);

/**
 * KEYS: log, state
 * ARGV: version
 * → { current version, events with a greater version (as published), ascending }
 * One step, so a subscriber that resumes sees the version its replay ends at (after a new
 * master's version step, as every script).
 */
export const EVENTS_AFTER = `
local K = { state = KEYS[2] }
${followMaster(`redis.call('HGET', K.state, 'replid')`)}
return { redis.call('HGET', KEYS[2], 'version') or '0', redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf') }
`;

/**
 * A script as it runs on a Redis Cluster: events are sent with SPUBLISH, so they travel to
 * the replicas of the shard that owns the space (and its subscribers) rather than to every
 * node. Redis checks that the channel is in the slot of the script's keys (it is hash-tagged
 * with the space, like them: RedisVmidStore.channel).
 */
export function sharded(lua: string): string {
  return lua.replaceAll(`redis.call('PUBLISH', `, `redis.call('SPUBLISH', `);
}
