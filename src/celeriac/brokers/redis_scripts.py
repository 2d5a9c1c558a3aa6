"""The Lua scripts of the Redis broker. Each runs atomically on the server.

Why scripts: a lease check and the action it guards must be one step, or a worker whose
lease ran out could ack a message in the instant after another worker claimed it. A
script also does in one round trip what would otherwise take one per priority band.

The key layout and the meaning of each structure are described in
``celeriac.brokers.redis``. Conventions shared by every script:

- A delivery is identified by its stream entry and checked against the stream's
  pending entries list (PEL): the lease is held when the PEL names the same consumer
  and the same delivery counter as the receipt. Every new delivery of an entry
  (XREADGROUP, XAUTOCLAIM, XCLAIM without JUSTID) raises the counter, so a stale
  receipt never matches again, even when the same consumer got the entry back.
- ``returned`` is the pseudo-consumer that owns handed-back (requeued) entries until a
  fetch takes them. ``requeued`` hashes count, per entry, how often it was handed back,
  so that delivery_count (the PEL counter minus that) does not count those deliveries.
- Stream entries carry two fields: ``i`` the message id and ``b`` the body. FETCH
  reports an entry that does not (a field missing, repeated or unknown) instead of
  delivering it, so that the broker dead-letters it.
"""

from __future__ import annotations

from celeriac.brokers.redis_connection import Script

# Helpers prepended to the scripts that act on deliveries.
_HOLDS = """
local function holds(stream, group, id, owner, raw)
  -- The PEL record is {id, consumer, idle ms, delivery counter}.
  local found = redis.pcall('XPENDING', stream, group, id, id, 1)
  if type(found) ~= 'table' or found.err or not found[1] then return false end
  return found[1][2] == owner and found[1][4] == tonumber(raw)
end
"""

# Reads the server's epoch for this key prefix, storing `candidate` when there is none
# (a new or emptied server). The broker compares it with the one it saw before: a
# different one means the data was lost (redis_durability.LossWatch).
_EPOCH = """
local function epoch(key, candidate)
  local current = redis.call('GET', key)
  if current then return current end
  redis.call('SET', key, candidate)
  return candidate
end
"""

EPOCH = Script("epoch", _EPOCH + """
-- KEYS  the epoch key
-- ARGV  candidate
return epoch(KEYS[1], ARGV[1])
""")

PUBLISH = Script("publish", """
-- Store a batch of messages, all or none: ready ones at the end of their band's
-- stream, scheduled ones in their queue's ETA set; note every queue's name.
-- KEYS  [1] the queues set, then per message: its stream or its eta zset
-- ARGV  per message: queue, then for a stream: "", message id, body;
--       for an eta zset: due time (Unix ms), member, ""
for i = 2, #KEYS do
  local a = (i - 2) * 4 + 1
  if ARGV[a + 1] == '' then
    redis.call('XADD', KEYS[i], '*', 'i', ARGV[a + 2], 'b', ARGV[a + 3])
  else
    redis.call('ZADD', KEYS[i], ARGV[a + 1], ARGV[a + 2])
  end
  if ARGV[a] ~= ARGV[a - 4] then redis.call('SADD', KEYS[1], ARGV[a]) end
end
return #KEYS - 1
""")

FETCH = Script("fetch", _EPOCH + """
-- Lease up to `limit` messages of the given queues, in queue order, then band 9 to 0,
-- and within a band oldest first: handed-back entries, then expired leases, then new
-- entries. Scheduled messages that are due move into their band's stream first.
--
-- KEYS[1]                 the dead-letter stream (for a scheduled member it cannot read)
-- KEYS[2]                 the epoch key
-- KEYS[3 + 13q ...]       per queue q: eta zset, requeued hash, reclaim cursors hash,
--                         then the streams of bands 9, 8, ..., 0
-- ARGV  group, consumer, returned, limit, lease_ms, reclaim (0/1), promote_max,
--       rounds (XAUTOCLAIM calls per band), epoch candidate, then the queue names
-- Returns {now_ms, next_due_ms or -1, epoch, then 8 values per delivery:
--          queue index, band, entry id, message id, body, PEL counter, delivery count,
--          problem ('' for an entry in celeriac's layout; else what is wrong with it,
--          and the body is the entry's list of fields)}
local group, consumer, returned = ARGV[1], ARGV[2], ARGV[3]
local need = tonumber(ARGV[4])
local lease_ms = ARGV[5]
local reclaim = ARGV[6] == '1'
local promote_max = tonumber(ARGV[7])
local rounds = tonumber(ARGV[8])
local stride = 13
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local out = {now_ms, -1, epoch(KEYS[2], ARGV[9])}

local function emit(q, band, entry, raw, requeued)
  -- An entry not in celeriac's layout (written by hand or by another program) is
  -- delivered with what is wrong with it and all its fields, and dead-lettered by the
  -- caller: it must neither wedge the fetch nor be dropped.
  local fields, id, body, problem = entry[2], nil, nil, ''
  for j = 1, #fields, 2 do
    local name = fields[j]
    if name == 'i' and not id then id = fields[j + 1]
    elseif name == 'b' and not body then body = fields[j + 1]
    elseif problem == '' then
      if name == 'i' or name == 'b' then
        problem = 'field ' .. name .. ' appears more than once'
      else
        problem = 'field ' .. string.format('%q', name) ..
                  ' is not part of the entry layout (i = message id, b = body)'
      end
    end
  end
  if not id then problem = 'field i (the message id) is missing'
  elseif id == '' then problem = 'field i (the message id) is empty'
  elseif not body then problem = 'field b (the message body) is missing' end
  local count = raw
  if raw > 1 then  -- only a redelivered entry can have been handed back before
    local back = redis.call('HGET', requeued, band .. '/' .. entry[1])
    if back then count = raw - tonumber(back) end
  end
  if problem ~= '' then body = fields end
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4] = q, band, entry[1], id or ''
  out[n + 5], out[n + 6], out[n + 7], out[n + 8] = body, raw, count, problem
  need = need - 1
end

local function promote(base, queue)
  local eta = KEYS[base]
  local due = redis.call('ZRANGE', eta, '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, promote_max)
  for _, member in ipairs(due) do
    -- member = "<band>:<id length>:<16 hex nonce><id><body>"
    local band, len, start = string.match(member, '^(%d):(%d+):()')
    if band then
      start = start + 16
      redis.call('XADD', KEYS[base + 3 + 9 - tonumber(band)], '*',
                 'i', string.sub(member, start, start + len - 1),
                 'b', string.sub(member, start + len))
    else  -- not written by celeriac: kept as a dead letter rather than dropped
      redis.call('XADD', KEYS[1], '*', 'i', '', 'q', queue, 'b', member,
                 'r', 'unreadable scheduled entry', 't', now_ms)
    end
    redis.call('ZREM', eta, member)
  end
  local first = redis.call('ZRANGE', eta, 0, 0, 'WITHSCORES')
  if first[2] then
    local due_ms = math.ceil(tonumber(first[2]))
    if out[2] < 0 or due_ms < out[2] then out[2] = due_ms end
  end
end

local function take_returned(q, band, stream, requeued)
  -- Only the returned pseudo-consumer's own PEL is read: cheap however many are leased.
  local back = redis.pcall('XPENDING', stream, group, '-', '+', need, returned)
  if type(back) ~= 'table' or back.err or #back == 0 then return end
  local ids, counters = {}, {}
  for i, p in ipairs(back) do ids[i] = p[1]; counters[p[1]] = p[4] end
  for _, entry in ipairs(redis.call('XCLAIM', stream, group, consumer, 0, unpack(ids))) do
    if entry then emit(q, band, entry, counters[entry[1]] + 1, requeued) end
  end
end

local function reclaim_expired(q, band, stream, requeued, cursors)
  -- XAUTOCLAIM scans at most 10 x COUNT PEL entries per call; the cursor is kept per
  -- band so that successive fetches (of any worker) go on where the last one stopped.
  local cursor = redis.call('HGET', cursors, band) or '0-0'
  local start = cursor
  for _ = 1, rounds do
    if need <= 0 then break end
    local res = redis.pcall('XAUTOCLAIM', stream, group, consumer, lease_ms, cursor,
                            'COUNT', need)
    if type(res) ~= 'table' or res.err then cursor = '0-0'; break end
    cursor = res[1]
    for _, entry in ipairs(res[2]) do
      if entry then  -- Redis 6.2 lists a deleted entry as nil
        local p = redis.call('XPENDING', stream, group, entry[1], entry[1], 1)
        emit(q, band, entry, p[1][4], requeued)
      end
    end
    if cursor == '0-0' then break end
  end
  if cursor ~= start then redis.call('HSET', cursors, band, cursor) end
end

local function read_new(q, band, stream, requeued)
  local res = redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', need,
                          'STREAMS', stream, '>')
  if type(res) == 'table' and res.err then
    -- No stream or no group yet (first use, or the server lost its data). The group
    -- starts at 0 so that entries published before it existed are delivered too.
    redis.pcall('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    res = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', need,
                     'STREAMS', stream, '>')
  end
  if res then
    for _, entry in ipairs(res[1][2]) do emit(q, band, entry, 1, requeued) end
  end
end

for q = 0, (#KEYS - 2) / stride - 1 do
  local base = 3 + q * stride
  promote(base, ARGV[10 + q])
  for b = 0, 9 do
    if need <= 0 then break end
    local band, stream, requeued = 9 - b, KEYS[base + 3 + b], KEYS[base + 1]
    -- An empty stream has nothing waiting, leased or handed back (acks delete entries):
    -- one cheap XLEN skips it, as most bands of most queues are empty.
    if redis.call('XLEN', stream) > 0 then
      take_returned(q, band, stream, requeued)
      if reclaim and need > 0 then reclaim_expired(q, band, stream, requeued, KEYS[base + 2]) end
      if need > 0 then read_new(q, band, stream, requeued) end
    end
  end
end
return out
""")

ENSURE = Script("ensure", """
-- Make each stream and its consumer group where missing (a first fetch of these queues,
-- or a server that lost its data), so that a blocking XREADGROUP can wait on them all.
-- The group starts at 0, so that entries published before it existed are delivered.
-- KEYS  streams
-- ARGV  group
for _, stream in ipairs(KEYS) do
  redis.pcall('XGROUP', 'CREATE', stream, ARGV[1], '0', 'MKSTREAM')
end
return #KEYS
""")

ACK = Script("ack", _HOLDS + _EPOCH + """
-- Remove leased messages for good: XACK ends the delivery, XDEL frees the entry so
-- that streams do not grow. A receipt whose lease was lost is skipped.
-- KEYS  per delivery: its stream, its queue's requeued hash; last, the epoch key
-- ARGV  group, then per delivery: entry id, consumer, PEL counter, requeued field;
--       last, the epoch candidate
-- Returns {epoch, how many were acked}
local group, done = ARGV[1], 0
local era = epoch(KEYS[#KEYS], ARGV[#ARGV])
for i = 1, (#KEYS - 1) / 2 do
  local stream, a = KEYS[2 * i - 1], 2 + (i - 1) * 4
  local id = ARGV[a]
  if holds(stream, group, id, ARGV[a + 1], ARGV[a + 2]) then
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    if tonumber(ARGV[a + 2]) > 1 then redis.call('HDEL', KEYS[2 * i], ARGV[a + 3]) end
    done = done + 1
  end
end
return {era, done}
""")

EXTEND = Script("extend", _EPOCH + """
-- Renew leases: XCLAIM by the owner itself resets the entry's idle time, which is the
-- lease clock XAUTOCLAIM reads; JUSTID leaves the delivery counter alone.
-- KEYS  the epoch key, then per delivery: its stream
-- ARGV  group, epoch candidate, then per delivery: entry id, consumer, PEL counter
-- Returns {epoch, then per delivery 1 (held), 0 (not held: taken over, or settled by
-- someone else) or -1 (its stream or the consumer group is gone: data lost)}.
local group, out = ARGV[1], {epoch(KEYS[1], ARGV[2])}
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 3
  local id, owner = ARGV[a], ARGV[a + 1]
  local found = redis.pcall('XPENDING', KEYS[i], group, id, id, 1)
  if type(found) ~= 'table' or found.err then
    out[i] = -1
  elseif found[1] and found[1][2] == owner and found[1][4] == tonumber(ARGV[a + 2]) then
    redis.call('XCLAIM', KEYS[i], group, owner, 0, id, 'JUSTID')
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
""")

REQUEUE = Script("requeue", _HOLDS + _EPOCH + """
-- Hand unstarted deliveries back: the entry stays where it is in its stream (so it
-- keeps its place in line) and passes to the returned pseudo-consumer, where the next
-- fetch finds it; the requeued hash remembers not to count this delivery.
-- KEYS  per delivery: its stream, its queue's requeued hash; last, the epoch key
-- ARGV  group, returned, then per delivery: entry id, consumer, PEL counter, requeued
--       field; last, the epoch candidate
-- Returns the epoch
local group, returned = ARGV[1], ARGV[2]
local era = epoch(KEYS[#KEYS], ARGV[#ARGV])
for i = 1, (#KEYS - 1) / 2 do
  local stream, a = KEYS[2 * i - 1], 3 + (i - 1) * 4
  if holds(stream, group, ARGV[a], ARGV[a + 1], ARGV[a + 2]) then
    redis.call('XCLAIM', stream, group, returned, 0, ARGV[a], 'JUSTID')
    redis.call('HINCRBY', KEYS[2 * i], ARGV[a + 3], 1)
  end
end
return era
""")

DEAD_LETTER = Script("dead_letter", _HOLDS + _EPOCH + """
-- Move leased messages to the dead-letter stream with their reason, and out of their
-- queue (as an ack does), in one step.
-- KEYS  [1] the dead-letter stream, then per delivery: its stream, its requeued hash;
--       last, the epoch key
-- ARGV  group, then per delivery: entry id, consumer, PEL counter, requeued field,
--       queue, message id, body, reason; last, the epoch candidate
-- Returns the epoch
local group = ARGV[1]
local era = epoch(KEYS[#KEYS], ARGV[#ARGV])
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
for i = 1, (#KEYS - 2) / 2 do
  local stream, a = KEYS[2 * i], 2 + (i - 1) * 8
  local id = ARGV[a]
  if holds(stream, group, id, ARGV[a + 1], ARGV[a + 2]) then
    redis.call('XADD', KEYS[1], '*', 'i', ARGV[a + 5], 'q', ARGV[a + 4], 'b', ARGV[a + 6],
               'r', ARGV[a + 7], 't', now_ms)
    redis.call('XACK', stream, group, id)
    redis.call('XDEL', stream, id)
    if tonumber(ARGV[a + 2]) > 1 then redis.call('HDEL', KEYS[2 * i + 1], ARGV[a + 3]) end
  end
end
return era
""")

STATS = Script("stats", """
-- Counts per queue, read in one atomic step. A stream holds the entries not yet
-- delivered plus the leased ones (acks delete entries), so ready = length - leased,
-- where handed-back entries count as ready, not as leased.
-- The oldest ready entry of a band is the first not yet delivered (after the group's
-- last-delivered id), the first handed back, or the first whose lease ran out; its
-- entry id is the server's time (ms) when it was added.
-- KEYS  per queue: eta zset, then the streams of bands 9..0
-- ARGV  group, returned, lease ms
-- Returns {ready, scheduled, in_flight, oldest entry ms or -1} per queue, then the
-- server's time in ms.
local group, returned, lease_ms, out = ARGV[1], ARGV[2], ARGV[3], {}

local function entry_ms(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function oldest_ready(stream)
  local oldest = nil
  local function consider(id)
    local ms = entry_ms(id)
    if ms and (oldest == nil or ms < oldest) then oldest = ms end
  end
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
    if fields['name'] == group then
      local first = redis.call('XRANGE', stream, '(' .. fields['last-delivered-id'], '+',
                               'COUNT', 1)
      if #first > 0 then consider(first[1][1]) end
    end
  end
  local back = redis.call('XPENDING', stream, group, '-', '+', 1, returned)
  if #back > 0 then consider(back[1][1]) end
  local expired = redis.call('XPENDING', stream, group, 'IDLE', lease_ms, '-', '+', 1)
  if #expired > 0 then consider(expired[1][1]) end
  return oldest
end

for q = 0, #KEYS / 11 - 1 do
  local base = 1 + q * 11
  local ready, leased, oldest = 0, 0, -1
  for b = 1, 10 do
    local stream = KEYS[base + b]
    local summary = redis.pcall('XPENDING', stream, group)
    local pending, back = 0, 0
    local grouped = type(summary) == 'table' and not summary.err
    if grouped then
      pending = summary[1]
      for _, c in ipairs(summary[4] or {}) do
        if c[1] == returned then back = tonumber(c[2]) end
      end
    end
    local waiting = math.max(0, redis.call('XLEN', stream) - pending) + back
    if waiting > 0 then
      local ms
      if grouped then
        ms = oldest_ready(stream)
      else  -- no worker has read this band yet: every entry waits, the first is oldest
        local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
        if #first > 0 then ms = entry_ms(first[1][1]) end
      end
      if ms and (oldest < 0 or ms < oldest) then oldest = ms end
    end
    ready = ready + waiting
    leased = leased + pending - back
  end
  out[#out + 1], out[#out + 2], out[#out + 3] = ready, redis.call('ZCARD', KEYS[base]), leased
  out[#out + 1] = oldest
end
local now = redis.call('TIME')
out[#out + 1] = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return out
""")

PURGE = Script("purge", """
-- Delete the waiting messages of one queue: scheduled, not yet delivered, handed back.
-- Leased entries stay (their workers still ack or extend them). Works in chunks of
-- `budget` entries per band so that a huge queue does not stall the server.
-- KEYS  eta zset, requeued hash, then the streams of bands 9..0
-- ARGV  group, returned, budget
-- Returns {removed, 1 if more remain else 0}
local group, returned, budget = ARGV[1], ARGV[2], tonumber(ARGV[3])
local removed, more = redis.call('ZCARD', KEYS[1]), 0
redis.call('UNLINK', KEYS[1])

local function last_delivered(stream)
  for _, info in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
    if fields['name'] == group then return fields['last-delivered-id'] end
  end
  return '0-0'
end

for b = 0, 9 do
  local stream, band = KEYS[3 + b], 9 - b
  local summary = redis.pcall('XPENDING', stream, group)
  if type(summary) ~= 'table' or summary.err or summary[1] == 0 then
    -- Nothing leased: every entry is waiting. XTRIM (not DEL) keeps the group.
    local length = redis.call('XLEN', stream)
    if length > 0 then redis.call('XTRIM', stream, 'MAXLEN', 0) end
    removed = removed + length
  else
    local back = redis.call('XPENDING', stream, group, '-', '+', budget, returned)
    for _, p in ipairs(back) do
      redis.call('XACK', stream, group, p[1])
      redis.call('XDEL', stream, p[1])
      redis.call('HDEL', KEYS[2], band .. '/' .. p[1])
    end
    local waiting = redis.call('XRANGE', stream, '(' .. last_delivered(stream), '+',
                               'COUNT', budget)
    local ids = {}
    for i, entry in ipairs(waiting) do ids[i] = entry[1] end
    if #ids > 0 then redis.call('XDEL', stream, unpack(ids)) end
    removed = removed + #back + #ids
    if #back == budget or #ids == budget then more = 1 end
  end
end
return {removed, more}
""")

PRUNE = Script("prune", """
-- Forget consumers that lease nothing and have been idle a long time (worker processes
-- that ended). Harmless for a live one: XREADGROUP creates it again.
-- KEYS  streams
-- ARGV  group, minimum idle ms, only this consumer ('' for any)
local group, min_idle, only, pruned = ARGV[1], tonumber(ARGV[2]), ARGV[3], 0
for _, stream in ipairs(KEYS) do
  local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, group)
  if type(consumers) == 'table' and not consumers.err then
    for _, info in ipairs(consumers) do
      local fields = {}
      for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
      if fields['pending'] == 0 and fields['idle'] >= min_idle
          and (only == '' or fields['name'] == only) then
        redis.call('XGROUP', 'DELCONSUMER', stream, group, fields['name'])
        pruned = pruned + 1
      end
    end
  end
end
return pruned
""")
