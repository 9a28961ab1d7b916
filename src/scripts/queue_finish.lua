-- queue_finish: the worker that holds a task's current claim ends it.
-- Stale claims (an older fencing token) are rejected, so a worker that was
-- paused or cut off past its lease cannot overwrite the new attempt.
-- Idempotent: the same claim finishing again (a retry after a lost reply)
-- gets the first answer back and changes nothing.
--
-- Handler failures (and timeouts) count against max_attempts; when
-- cancellation was requested, a failure or hand-back ends the task
-- 'cancelled' (a completed run still ends 'ok').
--
-- KEYS[1] = task hash   KEYS[2] = running zset   KEYS[3] = ended zset
-- KEYS[4] = failed zset   KEYS[5] = delayed zset   KEYS[6] = wake-up marker list
-- ARGV[1] = task id   ARGV[2] = fencing token
-- ARGV[3] = how: 'ok' | 'failed' | 'cancelled' | 'handback' | 'corrupt'
-- ARGV[4] = result (ok) or error text (failed, corrupt)   ARGV[5] = queue events channel
-- ARGV[6] = keep at most this many ended tasks   ARGV[7] = keep ended tasks this many ms
-- ARGV[8] = task key prefix   ARGV[9] = jitter, a fraction in [0, 1)
-- Returns {1, event, error text} when applied ('completed', 'retrying', 'failed',
-- 'cancelled', 'requeued'), {0, current state} when the claim is stale.
local key, running, ended, failed, delayed, marker =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local id, fence_arg, how, text, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
want_type(running, 'zset')
want_type(ended, 'zset')
want_type(failed, 'zset')
want_type(delayed, 'zset')
want_type(marker, 'list')
local jitter = tonumber(ARGV[9]) or 0
if jitter < 0 or jitter >= 1 then jitter = 0 end
local now = now_ms()

local task, why = load_task(key, {'fence', 'attempts', 'max_attempts', 'failures', 'backoff_ms', 'max_backoff_ms'})
if not task and not why then return {0, 'missing'} end
if not task then
  -- Unusable record: end it as corrupt if this caller may (it holds the
  -- claim, or the record is beyond checking and the task is running).
  local ours
  if redis.call('TYPE', key)['ok'] == 'hash' then
    local raw = redis.call('HMGET', key, 'fence', 'state')
    ours = raw[1] == fence_arg and raw[2] == 'running'
  else
    ours = redis.call('ZSCORE', running, id) ~= false
  end
  if not ours then return {0, 'corrupt'} end
  local reason = fail_corrupt(key, id, why, running, failed, now, channel)
  return {1, 'failed', reason}
end

local done = redis.call('HMGET', key, 'done_fence', 'done_event', 'error')
if num_text(task.fence) == fence_arg and task.state ~= 'running' and done[1] == fence_arg and done[2] then
  return {1, done[2], done[3] or ''}
end
if num_text(task.fence) ~= fence_arg or task.state ~= 'running' then
  return {0, task.state}
end

-- Checked: now write.
redis.call('ZREM', running, id)
local event, err_text = nil, ''
local function to_end(outcome, set)
  redis.call('HSET', key, 'state', 'end', 'outcome', outcome, 'ended', now, 'updated', now)
  redis.call('HDEL', key, 'claim')
  redis.call('ZADD', set, now, id)
end
if how == 'ok' then
  redis.call('HSET', key, 'result', text)
  to_end('ok', ended)
  event = 'completed'
elseif how == 'cancelled' or ((how == 'failed' or how == 'handback') and task.cancel_requested) then
  to_end('cancelled', ended)
  event = 'cancelled'
elseif how == 'handback' then
  -- Not the task's fault: the run does not count.
  redis.call('HSET', key, 'attempts', num_text(math.max(task.attempts - 1, 0)))
  requeue_now(key, id, delayed, marker, now)
  event = 'requeued'
elseif how == 'corrupt' then
  err_text = text
  redis.call('HSET', key, 'error', text, 'failed_by', 'corrupt')
  to_end('failed', failed)
  event = 'failed'
else
  err_text = text
  local failures = task.failures + 1
  redis.call('HSET', key, 'error', text, 'failures', num_text(failures))
  if failures < task.max_attempts then
    -- Exponential backoff, capped, with jitter: between half and all of
    -- min(backoff * 2^(failures - 1), max_backoff). The exponent is capped
    -- so that a zero backoff never meets an infinite factor.
    local base = math.min(task.backoff_ms * 2 ^ math.min(failures - 1, 62), task.max_backoff_ms)
    local delay = math.floor(base / 2 + jitter * base / 2)
    redis.call('HSET', key, 'state', 'queued', 'run_at', num_text(now + delay), 'updated', now)
    redis.call('HDEL', key, 'claim')
    redis.call('ZADD', delayed, now + delay, id)
    -- Wakes a blocked worker, which learns the new earliest due time.
    redis.call('LPUSH', marker, '1')
    redis.call('LTRIM', marker, 0, 999)
    event = 'retrying'
  else
    redis.call('HSET', key, 'failed_by', 'handler')
    to_end('failed', failed)
    event = 'failed'
  end
end
redis.call('HSET', key, 'done_fence', fence_arg, 'done_event', event)
publish_event(channel, key, {task = id, event = event, error = (err_text ~= '') and err_text or nil})
-- Retention of ended tasks: bounded by count and age, a bounded batch per call.
local old = redis.call('ZRANGEBYSCORE', ended, '-inf', now - tonumber(ARGV[7]), 'LIMIT', 0, 100)
for _, oid in ipairs(old) do
  redis.call('ZREM', ended, oid)
  redis.call('DEL', ARGV[8] .. oid)
end
local extra = redis.call('ZCARD', ended) - tonumber(ARGV[6])
if extra > 0 then
  local ids = redis.call('ZRANGE', ended, 0, math.min(extra, 100) - 1)
  for _, oid in ipairs(ids) do
    redis.call('ZREM', ended, oid)
    redis.call('DEL', ARGV[8] .. oid)
  end
end
return {1, event, err_text}
