-- Chunk tracker helpers, prepended (after the prelude) to every tracker_*.lua.
-- A task record is a hash: state (open | closed | released | processing |
-- completed | failed), info, attempts (allowed), attempt (claims so far),
-- timeout (processing, ms), errors, error (last reason), fence, consumer,
-- reported ('<fence>:<outcome>' of the last finished attempt) and times
-- (created, closed, released, started, finished; ms, Redis clock).

local TRACKER_STATES = {
  open = true, closed = true, released = true,
  processing = true, completed = true, failed = true,
}

local TRACKER_FIELDS = {'state', 'attempts', 'attempt', 'timeout', 'errors', 'fence', 'reported'}

-- Reads and checks task record `key` (with its info when `with_info`, which
-- may be large); nil when absent. Writes nothing.
local function task_read(key, with_info)
  want_type(key, 'hash')
  local fields = {unpack(TRACKER_FIELDS)}
  if with_info then fields[#fields + 1] = 'info' end
  local vals = redis.call('HMGET', key, unpack(fields))
  local t = {}
  for i, f in ipairs(fields) do
    if vals[i] then t[f] = vals[i] end
  end
  if not t.state then
    if redis.call('EXISTS', key) == 0 then return nil end
    corrupt(key, 'the task record has no state')
  end
  if not TRACKER_STATES[t.state] then
    corrupt(key, 'state is "' .. string.sub(t.state, 1, 40) .. '", not a tracker state')
  end
  for _, f in ipairs({'attempts', 'attempt', 'timeout', 'errors', 'fence'}) do
    if t[f] ~= nil and not count_of(t[f]) then
      corrupt(key, '`' .. f .. '` is not a whole number: "' .. string.sub(t[f], 1, 40) .. '"')
    end
  end
  return t
end

-- Adds `member` to deadline zset `zset` at `deadline`; publishes on
-- `channel` when that is now the earliest deadline, so a sweeper sleeping
-- until a later one wakes up.
local function add_deadline(zset, member, deadline, channel)
  local first = redis.call('ZRANGE', zset, 0, 0, 'WITHSCORES')
  redis.call('ZADD', zset, deadline, member)
  if not first[2] or deadline < tonumber(first[2]) then
    redis.call('PUBLISH', channel, 'deadline')
  end
end

-- Hands task `task` (record `tkey`) to the consumers.
local function release(tkey, task, now, released, wake)
  redis.call('HSET', tkey, 'state', 'released', 'released', num_text(now))
  redis.call('RPUSH', released, task)
  redis.call('PUBLISH', wake, task)
end

-- Ends the running attempt of `task` (checked record `t`): completed when
-- `reason` is nil; otherwise released again while attempts remain, else
-- failed. `how` tags the report for idempotent retries. Returns the outcome.
local function end_attempt(tkey, t, task, reason, how, now, processing, released, stats, retention, wake)
  redis.call('ZREM', processing, task)
  local fence = t.fence or '0'
  if reason == nil then
    redis.call('HSET', tkey, 'state', 'completed', 'finished', num_text(now), 'reported', fence .. ':' .. how .. 'completed')
    redis.call('HINCRBY', stats, 'completed', 1)
    redis.call('PEXPIRE', tkey, retention)
    return 'completed'
  end
  redis.call('HINCRBY', tkey, 'errors', 1)
  redis.call('HSET', tkey, 'error', reason)
  if (count_of(t.attempt) or 0) < (count_of(t.attempts) or 1) then
    redis.call('HSET', tkey, 'reported', fence .. ':' .. how .. 'released')
    release(tkey, task, now, released, wake)
    return 'released'
  end
  redis.call('HSET', tkey, 'state', 'failed', 'finished', num_text(now), 'reported', fence .. ':' .. how .. 'failed')
  redis.call('HINCRBY', stats, 'failed', 1)
  redis.call('PEXPIRE', tkey, retention)
  return 'failed'
end

-- Removes chunk lock `chunk` of `task`; releases the task when it was the
-- closed task's last one. Returns true when the task was released.
local function drop_chunk(tkey, ckey, task, chunk, locks, since, now, released, wake)
  local member = task .. '\n' .. chunk
  redis.call('HDEL', ckey, chunk)
  redis.call('ZREM', locks, member)
  redis.call('ZREM', since, member)
  if redis.call('HGET', tkey, 'state') == 'closed' and redis.call('HLEN', ckey) == 0 then
    release(tkey, task, now, released, wake)
    return true
  end
  return false
end
