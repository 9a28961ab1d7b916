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
-- counters the caller needs beyond state, worker, claim and cancel_requested.
local function load_task(key, fields)
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then return nil, nil end
  if t ~= 'hash' then return nil, 'is a ' .. t .. ', not a task hash' end
  local names = {'state', 'worker', 'claim', 'cancel_requested'}
  for _, f in ipairs(fields) do names[#names + 1] = f end
  local raw = redis.call('HMGET', key, unpack(names))
  local task = {}
  for i, f in ipairs(names) do task[f] = raw[i] end
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

local function publish_event(channel, task_key, ev)
  local payload = cjson.encode(ev)
  redis.call('PUBLISH', channel, payload)
  redis.call('PUBLISH', task_key .. ':events', payload)
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
