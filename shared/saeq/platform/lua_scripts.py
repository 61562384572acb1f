"""The registry's Lua scripts: each runs as one atomic step in Redis, so concurrent API replicas
and workers never pass a quota or a slot limit together. Record fields are JSON-encoded
(saeq.platform.job_model.encode); keys come in as KEYS, built by saeq.platform.redis_keys.
"""

# KEYS: job, team's active set, team's waiting set, dispatched-not-claimed set, the queue's
#   dispatched set, every team's name (the scheduler reads the waiting sets of those), the queue's
#   sent set (job_counts: the oldest wait).
# ARGV: max_running, dispatch_id, waiting score, job id, now, the queue's capacity (-1: not
#   gated), team, created_at. Fields are JSON-encoded (_encode).
# Returns 1: dispatched; 0: no team slot, waiting; 2: no free capacity on its queue, waiting;
#   -1: not queued, or already dispatched.
DISPATCH = """
local state = redis.call('hget', KEYS[1], 'state')
if state ~= '"queued"' or redis.call('hget', KEYS[1], 'dispatched') == 'true' then
  redis.call('zrem', KEYS[3], ARGV[4])
  return -1
end
redis.call('sadd', KEYS[6], ARGV[7])
if redis.call('scard', KEYS[2]) >= tonumber(ARGV[1]) then
  redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
  return 0
end
local capacity = tonumber(ARGV[6])
if capacity >= 0 and redis.call('scard', KEYS[5]) >= capacity then
  redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
  return 2
end
redis.call('hset', KEYS[1], 'dispatched', 'true', 'dispatch_id', '"' .. ARGV[2] .. '"')
redis.call('sadd', KEYS[2], ARGV[4])
redis.call('sadd', KEYS[5], ARGV[4])
redis.call('zrem', KEYS[3], ARGV[4])
redis.call('zadd', KEYS[4], ARGV[5], ARGV[4])
redis.call('zadd', KEYS[7], ARGV[8], ARGV[4])
return 1
"""


# KEYS: 1 team's upload bytes, 2 its records, 3 the upload's owner, 4 the team's uploads in order,
#   5 its recent reserves. ARGV: 1 id, 2 size, 3 max bytes, 4 record, 5 team, 6 order member,
#   7 max uploads, 8 per minute, 9 now.
RESERVE_UPLOAD = """
local now = tonumber(ARGV[9])
redis.call('zremrangebyscore', KEYS[5], '-inf', now - 60)
if redis.call('zcard', KEYS[5]) >= tonumber(ARGV[8]) then
  local oldest = redis.call('zrange', KEYS[5], 0, 0, 'WITHSCORES')
  local wait = 60
  if oldest[2] then wait = tonumber(oldest[2]) + 60 - now end
  return {'rate', math.max(1, math.ceil(wait))}
end
local kept = redis.call('hlen', KEYS[2])
if kept >= tonumber(ARGV[7]) then
  return {'count', kept}
end
local used = tonumber(redis.call('get', KEYS[1]) or '0')
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  return {'bytes', used}
end
redis.call('incrby', KEYS[1], ARGV[2])
redis.call('hset', KEYS[2], ARGV[1], ARGV[4])
redis.call('set', KEYS[3], ARGV[5])
redis.call('zadd', KEYS[4], 0, ARGV[6])
redis.call('zadd', KEYS[5], now, ARGV[1])
redis.call('expire', KEYS[5], 61)
return {'ok', used + tonumber(ARGV[2])}
"""


COMMIT_UPLOAD = """
if redis.call('hget', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


RELEASE_UPLOAD = """
local record = redis.call('hget', KEYS[2], ARGV[1])
local size = 0
if record then
  size = cjson.decode(record)['size']
  redis.call('hdel', KEYS[2], ARGV[1])
  redis.call('decrby', KEYS[1], string.format('%d', size))
  local created = string.format('%017.6f', cjson.decode(record)['created_at'] or 0)
  redis.call('zrem', KEYS[4], created .. '/' .. ARGV[1])
end
redis.call('del', KEYS[3])
return size
"""


# KEYS: 1 record, 2 its events, 3 all jobs, 4 team's jobs, 5 team's open, 6 team's active,
#   7 team's ended, 8 team's recent submits, 9 idempotency key, 10 submit counters, 11 specs in the
#   store, 12 jobs by kind and state, 13 by team and state, then per dependency: its dependents
#   set, its record.
# ARGV: 1 job id, 2 now, 3 max_queued, 4 max_stored, 5 submits_per_minute (-1: no limit), 6 request
#   digest, 7 idempotency TTL (0: no key), 8 kind, 9 first event, 10 record key prefix, 11 spec in
#   the store (1/0), 12 its kind|state field, 13 its team|state field (job_counts), 14... the
#   record's field, value pairs.
# Returns {status, id or seconds}: created, existing, conflict, rate (retry after), queued, stored,
#   missing (index of a dependency whose record is gone).
CREATE = """
if redis.call('exists', KEYS[1]) == 1 then
  return {'created', ARGV[1]}  -- a new id: this call ran already, and its answer was lost (retried)
end
local now = tonumber(ARGV[2])
if ARGV[7] ~= '0' then
  local seen = redis.call('get', KEYS[9])
  if seen then
    local id, digest = string.match(seen, '^(%x+) ?(%x*)$')
    -- The earlier job's record key is built here: saeq's Redis is never a cluster.
    if id and redis.call('exists', ARGV[10] .. id) == 1 then
      if digest == '' or digest == ARGV[6] then return {'existing', id} end
      return {'conflict', id}
    end
  end
end
local per_minute = tonumber(ARGV[5])
if per_minute >= 0 then
  redis.call('zremrangebyscore', KEYS[8], '-inf', now - 60)
  if redis.call('zcard', KEYS[8]) >= per_minute then
    local oldest = redis.call('zrange', KEYS[8], 0, 0, 'WITHSCORES')
    local wait = 60
    if oldest[2] then wait = tonumber(oldest[2]) + 60 - now end
    return {'rate', tostring(math.max(1, math.ceil(wait)))}
  end
end
local max_queued = tonumber(ARGV[3])
if max_queued >= 0 and redis.call('scard', KEYS[5]) - redis.call('scard', KEYS[6]) >= max_queued then
  return {'queued', ''}
end
local max_stored = tonumber(ARGV[4])
if max_stored >= 0 and redis.call('zcard', KEYS[4]) - redis.call('zcount', KEYS[7], '-inf', ARGV[2]) >= max_stored then
  return {'stored', ''}
end
for i = 14, #KEYS, 2 do
  -- Expired or purged since the caller checked it: its dependents set would never expire.
  if redis.call('exists', KEYS[i + 1]) == 0 then return {'missing', tostring((i - 14) / 2)} end
end
redis.call('hset', KEYS[1], unpack(ARGV, 14))
redis.call('hincrby', KEYS[12], ARGV[12], 1)
redis.call('hincrby', KEYS[13], ARGV[13], 1)
redis.call('zadd', KEYS[3], ARGV[2], ARGV[1])
redis.call('zadd', KEYS[4], ARGV[2], ARGV[1])
redis.call('sadd', KEYS[5], ARGV[1])
redis.call('hincrby', KEYS[10], ARGV[8], 1)
redis.call('xadd', KEYS[2], 'MAXLEN', '~', '2000', '*', 'e', ARGV[9])
if ARGV[11] == '1' then redis.call('sadd', KEYS[11], ARGV[1]) end
if per_minute >= 0 then
  redis.call('zadd', KEYS[8], ARGV[2], ARGV[1])
  redis.call('expire', KEYS[8], 61)
end
if ARGV[7] ~= '0' then redis.call('set', KEYS[9], ARGV[1] .. ' ' .. ARGV[6], 'EX', ARGV[7]) end
for i = 14, #KEYS, 2 do
  redis.call('sadd', KEYS[i], ARGV[1])
  -- A dependency that ended already expires: so does the set of its dependents.
  local ttl = redis.call('pttl', KEYS[i + 1])
  if ttl > 0 then redis.call('pexpire', KEYS[i], ttl) end
end
return {'created', ARGV[1]}
"""


HSET_EXISTING = """
if redis.call('exists', KEYS[1]) == 1 then return redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""


# KEYS: the record, its events. ARGV: the entry (JSON).
XADD_EXISTING = """
if redis.call('exists', KEYS[1]) == 0 then return false end
return redis.call('xadd', KEYS[2], 'MAXLEN', '~', '2000', '*', 'e', ARGV[1])
"""


RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


# ---- the job counts (saeq.platform.job_counts) -------------------------------------------------
# Fields are `kind|state` and `team|state`; an ended job's COUNT_EXPIRING member is
# `job_id|kind|team|state` (job_counts.expiring_member builds both in Python).

# KEYS: 1 COUNT_EXPIRING, 2 by kind and state, 3 by team and state. ARGV: 1 record key prefix,
#   2 now, 3 at most this many. Drops from the counts each due job whose record is gone; one still
#   there (its TTL was renewed) is scored again, one kept without a TTL leaves the set (its end
#   adds it again). Returns how many were dropped.
SETTLE_EXPIRED = """
local due = redis.call('zrangebyscore', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
local dropped = 0
for _, m in ipairs(due) do
  local id, kind, team, state = string.match(m, '^([^|]+)|([^|]+)|([^|]+)|([^|]+)$')
  local ttl = redis.call('pttl', ARGV[1] .. id)
  if ttl == -2 then
    redis.call('zrem', KEYS[1], m)
    redis.call('hincrby', KEYS[2], kind .. '|' .. state, -1)
    redis.call('hincrby', KEYS[3], team .. '|' .. state, -1)
    dropped = dropped + 1
  elseif ttl == -1 then
    redis.call('zrem', KEYS[1], m)
  else
    redis.call('zadd', KEYS[1], tonumber(ARGV[2]) + ttl / 1000, m)
  end
end
return dropped
"""


# KEYS: 1 record, 2 its events, 3 its dependents, 4 COUNT_EXPIRING, 5 by kind and state, 6 by team
#   and state. ARGV: 1 job id. Deletes the record and, if it was there, counts it out.
PURGE_RECORD = """
local v = redis.call('hmget', KEYS[1], 'kind', 'state', 'team')
if v[1] and v[2] then
  local kind, state, team = cjson.decode(v[1]), cjson.decode(v[2]), 'default'
  if v[3] then
    local t = cjson.decode(v[3])
    if t ~= cjson.null and t ~= '' then team = t end
  end
  redis.call('hincrby', KEYS[5], kind .. '|' .. state, -1)
  redis.call('hincrby', KEYS[6], team .. '|' .. state, -1)
  redis.call('zrem', KEYS[4], ARGV[1] .. '|' .. kind .. '|' .. team .. '|' .. state)
end
return redis.call('del', KEYS[1], KEYS[2], KEYS[3])
"""


# KEYS: 1 ALL_JOBS, 2 by kind and state, 3 by team and state, 4 COUNT_EXPIRING, 5 COUNT_VERSION,
#   6... each queue's sent set. ARGV: 1 record key prefix, 2 now, 3 version, 4... the queues (as
#   KEYS 6...). Every count rebuilt from the records, in one atomic step: O(stored jobs), run once
#   when COUNT_VERSION is missing (an upgrade from counters-less saeq, or a repair).
RECOUNT = """
redis.call('del', KEYS[2], KEYS[3], KEYS[4])
local sent = {}
for i = 6, #KEYS do
  redis.call('del', KEYS[i])
  sent[ARGV[i - 2]] = KEYS[i]
end
local ids = redis.call('zrange', KEYS[1], 0, -1)
local terminal = {succeeded = true, failed = true, cancelled = true}
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local v = redis.call('hmget', key, 'kind', 'state', 'team', 'queue', 'created_at', 'dispatched')
  if v[1] and v[2] then
    local kind, state, team = cjson.decode(v[1]), cjson.decode(v[2]), 'default'
    if v[3] then
      local t = cjson.decode(v[3])
      if t ~= cjson.null and t ~= '' then team = t end
    end
    redis.call('hincrby', KEYS[2], kind .. '|' .. state, 1)
    redis.call('hincrby', KEYS[3], team .. '|' .. state, 1)
    local queue = v[4] and cjson.decode(v[4])
    if state == 'queued' and v[6] == 'true' and sent[queue] then
      redis.call('zadd', sent[queue], v[5], id)  -- the JSON number as stored: no float rounding
    end
    local ttl = redis.call('pttl', key)
    if terminal[state] and ttl > 0 then
      redis.call('zadd', KEYS[4], tonumber(ARGV[2]) + ttl / 1000, id .. '|' .. kind .. '|' .. team .. '|' .. state)
    end
  end
end
redis.call('set', KEYS[5], ARGV[3])
return #ids
"""


# ---- preemption requests (saeq.platform.job_preempt) --------------------------------------------
# A Lua function, not a script: the request script below and the scheduler's end-of-pass script
# (saeq.platform.schedule_snapshot) both define it, so a pass asks its victims in the round trip
# that frees its lock. Asks the job of `record` to yield if it is dispatched (running, or queued
# and sent) and not being cancelled (a cancel wins): `preempt` set to `reason` (JSON) and the
# `preempting` event `entry` (JSON) logged, in one atomic step. Returns 1 if asked, else 0.
REQUEST_PREEMPT_FUNCTION = """
local function request_preempt(record, events, reason, entry)
  local v = redis.call('hmget', record, 'id', 'state', 'dispatched', 'cancel_requested')
  if not v[1] or v[4] == 'true' then return 0 end
  if not (v[2] == '"running"' or (v[2] == '"queued"' and v[3] == 'true')) then return 0 end
  redis.call('hset', record, 'preempt', reason)
  redis.call('xadd', events, 'MAXLEN', '~', '2000', '*', 'e', entry)
  return 1
end
"""

# KEYS: per job, its record and its events. ARGV: per job, the reason and the event entry (JSON).
# Returns per job 1 (asked) or 0.
REQUEST_PREEMPTS = (
    REQUEST_PREEMPT_FUNCTION
    + """
local asked = {}
for i = 1, #KEYS, 2 do asked[#asked + 1] = request_preempt(KEYS[i], KEYS[i + 1], ARGV[i], ARGV[i + 1]) end
return asked
"""
)
