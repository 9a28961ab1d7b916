-- queue_lib: helpers shared by the queue scripts (prepended after the prelude).
--
-- DESIGN rule 11: Redis does not roll back a script that fails midway, so
-- every queue script reads and checks what it needs before its first write.
-- A queue-level key of the wrong type aborts the script before any write
-- with an error reply 'CORRUPT <key>\t<reason>' (Error::CorruptData on the
-- Rust side). A task record that cannot be used is not an error: the task
-- is moved to the failed set with the reason, and the caller goes on.

-- corrupt(), want_type(), count_of(), num_text() and next_fence() come from
-- the prelude.

-- The task fields the scripts read, and how to check them. A missing
-- counter added by a later version reads as its default.
local TASK_COUNTS = {
  attempts = 0, max_attempts = false, failures = 0, lost = 0, max_lost = 10,
  fence = false, timeout_ms = 0, backoff_ms = false, max_backoff_ms = 3600000,
}

-- Reads task `key`: returns the record (counters as numbers), or nil and
-- why it is unusable, or nil, nil if it does not exist. `fields` lists the
-- fields the caller needs beyond `state` (each field read costs Redis time
-- on the hot path, so callers name only what they use).
local function load_task(key, fields)
  local names = {'state'}
  for _, f in ipairs(fields) do names[#names + 1] = f end
  -- One call, not TYPE + HMGET: a key of another type answers WRONGTYPE.
  local raw = redis.pcall('HMGET', key, unpack(names))
  if raw['err'] then
    if not string.find(raw['err'], 'WRONGTYPE', 1, true) then error(raw) end
    return nil, 'is a ' .. redis.call('TYPE', key)['ok'] .. ', not a task hash'
  end
  local task, any = {}, false
  for i, f in ipairs(names) do
    task[f] = raw[i]
    if raw[i] then any = true end
  end
  if not any and redis.call('EXISTS', key) == 0 then return nil, nil end
  local s = task.state
  if s ~= 'queued' and s ~= 'running' and s ~= 'end' then
    return nil, 'field `state` is ' .. (s and ('"' .. s .. '"') or 'missing')
  end
  for _, f in ipairs(fields) do
    local default = TASK_COUNTS[f]
    if default ~= nil then
      local v = task[f]
      if v == false or v == nil then
        if default == false then return nil, 'field `' .. f .. '` is missing' end
        task[f] = default
      else
        local n = count_of(v)
        if not n then return nil, 'field `' .. f .. '` is not a whole number: "' .. tostring(v) .. '"' end
        task[f] = n
      end
    end
  end
  if task.max_attempts == 0 then return nil, 'field `max_attempts` is 0' end
  if task.max_lost == 0 then return nil, 'field `max_lost` is 0' end
  return task, nil
end

-- Task events (one channel per queue, DESIGN: events must not be what
-- limits throughput): every message is a JSON array of events, so a script
-- that ends or starts many tasks publishes once. Subscribers of one task
-- filter by id on their side.
local function publish_events(channel, events)
  if #events > 0 then redis.call('PUBLISH', channel, cjson.encode(events)) end
end

local function publish_event(channel, _task_key, ev)
  publish_events(channel, {ev})
end

-- Ends a task whose record cannot be used: out of `from` (the set it was
-- found in) into `failed`, with the reason naming the key. A record that is
-- not a hash is left as it is (only its id moves).
local function fail_corrupt(key, id, why, from, failed, now, channel)
  local reason = 'corrupt data at `' .. key .. '`: ' .. why
  redis.call('ZREM', from, id)
  if redis.call('TYPE', key)['ok'] == 'hash' then
    redis.call('HSET', key, 'state', 'end', 'outcome', 'failed', 'failed_by', 'corrupt',
      'error', reason, 'ended', now, 'updated', now)
  end
  redis.call('ZADD', failed, now, id)
  publish_event(channel, key, {task = id, event = 'failed', error = reason})
  return reason
end

-- Back to the queue, due now (the next claim promotes it to ready with its
-- priority); wakes one blocked worker.
local function requeue_now(key, id, delayed, marker, now)
  redis.call('HSET', key, 'state', 'queued', 'run_at', now, 'updated', now)
  redis.call('HDEL', key, 'claim', 'cancel_requested')
  redis.call('ZADD', delayed, now, id)
  redis.call('LPUSH', marker, '1')
  redis.call('LTRIM', marker, 0, 999)
end

-- The queue-level keys most scripts share, in this order in KEYS:
-- ready, delayed, running, marker, failed, ended. Checked before any write.
local function queue_keys(first)
  local Q = {
    ready = KEYS[first], delayed = KEYS[first + 1], running = KEYS[first + 2],
    marker = KEYS[first + 3], failed = KEYS[first + 4], ended = KEYS[first + 5],
  }
  want_type(Q.ready, 'zset')
  want_type(Q.delayed, 'zset')
  want_type(Q.running, 'zset')
  want_type(Q.marker, 'list')
  want_type(Q.failed, 'zset')
  want_type(Q.ended, 'zset')
  return Q
end

-- Tasks whose lease ran out (their worker died, hung or was cut off) go
-- back to the queue: from the running zset by deadline, at most `batch`
-- (O(log n + k)). A run lost with its worker is not the task's failure: it
-- counts against max_lost (field `lost`), not max_attempts. Only a task
-- that loses max_lost runs (a poison task that kills every worker it
-- touches) ends failed, with failed_by = 'lost'. A task whose cancellation
-- was requested ends 'cancelled'; an unusable record ends failed with
-- failed_by = 'corrupt'. Appends events to `events`; returns
-- requeued, failed.
local function reap_expired(Q, prefix, channel, now, batch, events)
  local ids = redis.call('ZRANGEBYSCORE', Q.running, '-inf', now, 'LIMIT', 0, batch)
  local requeued, nfailed = 0, 0
  for _, id in ipairs(ids) do
    local key = prefix .. id
    local task, why = load_task(key, {'attempts', 'lost', 'max_lost', 'worker', 'cancel_requested'})
    if not task and not why then
      redis.call('ZREM', Q.running, id) -- deleted meanwhile
    elseif not task then
      fail_corrupt(key, id, why, Q.running, Q.failed, now, channel)
      nfailed = nfailed + 1
    elseif task.state ~= 'running' then
      redis.call('ZREM', Q.running, id) -- a stale entry: the task moved on
    else
      redis.call('ZREM', Q.running, id)
      local lost = task.lost + 1
      redis.call('HSET', key, 'lost', num_text(lost))
      if task.cancel_requested then
        redis.call('HSET', key, 'state', 'end', 'outcome', 'cancelled', 'ended', now, 'updated', now)
        redis.call('HDEL', key, 'claim')
        redis.call('ZADD', Q.ended, now, id)
        events[#events + 1] = {task = id, event = 'cancelled'}
      elseif lost >= task.max_lost then
        local reason = 'run lost with its worker ' .. lost .. ' times (max_lost_runs ' .. task.max_lost ..
          '): the lease of attempt ' .. task.attempts .. ' on worker ' .. (task.worker or '?') .. ' expired'
        redis.call('HSET', key, 'state', 'end', 'outcome', 'failed', 'failed_by', 'lost',
          'ended', now, 'updated', now, 'error', reason)
        redis.call('HDEL', key, 'claim')
        redis.call('ZADD', Q.failed, now, id)
        nfailed = nfailed + 1
        events[#events + 1] = {task = id, event = 'failed', error = reason}
      else
        requeue_now(key, id, Q.delayed, Q.marker, now)
        requeued = requeued + 1
        events[#events + 1] = {task = id, event = 'requeued'}
      end
    end
  end
  return requeued, nfailed
end
