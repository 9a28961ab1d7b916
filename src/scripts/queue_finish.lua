-- queue_finish: the worker that holds a task's current claim ends it.
-- Stale claims (an older fencing token) are rejected, so a worker that was
-- paused or cut off past its lease cannot overwrite the new attempt.
-- KEYS[1] = task hash   KEYS[2] = running zset   KEYS[3] = ended zset
-- KEYS[4] = failed zset   KEYS[5] = delayed zset   KEYS[6] = wake-up marker list
-- ARGV[1] = task id   ARGV[2] = fencing token   ARGV[3] = how: 'ok' | 'failed' | 'cancelled' | 'handback'
-- ARGV[4] = result (ok) or error text (failed)   ARGV[5] = queue events channel
-- ARGV[6] = keep at most this many ended tasks   ARGV[7] = keep ended tasks this many ms
-- ARGV[8] = task key prefix
-- Returns {1, event} when applied ('completed', 'retrying', 'failed', 'cancelled',
-- 'requeued'), {0, current state} when the claim is stale.
local now = now_ms()
local fence = redis.call('HGET', KEYS[1], 'fence')
local state = redis.call('HGET', KEYS[1], 'state')
if not fence or fence ~= ARGV[2] or state ~= 'running' then
  return {0, state or 'missing'}
end
redis.call('ZREM', KEYS[2], ARGV[1])
local how, event = ARGV[3], nil
local function to_end(outcome, set)
  redis.call('HSET', KEYS[1], 'state', 'end', 'outcome', outcome, 'ended', now, 'updated', now)
  redis.call('ZADD', set, now, ARGV[1])
end
if how == 'ok' then
  redis.call('HSET', KEYS[1], 'result', ARGV[4])
  to_end('ok', KEYS[3])
  event = 'completed'
elseif how == 'cancelled' then
  to_end('cancelled', KEYS[3])
  event = 'cancelled'
elseif how == 'handback' and redis.call('HEXISTS', KEYS[1], 'cancel_requested') == 1 then
  to_end('cancelled', KEYS[3])
  event = 'cancelled'
elseif how == 'handback' then
  -- Not the task's fault: the attempt does not count.
  redis.call('HINCRBY', KEYS[1], 'attempts', -1)
  -- Due at once: the next claim promotes it to ready with its priority.
  redis.call('HSET', KEYS[1], 'state', 'queued', 'run_at', now, 'updated', now)
  redis.call('ZADD', KEYS[5], now, ARGV[1])
  redis.call('LPUSH', KEYS[6], '1')
  event = 'requeued'
else
  redis.call('HSET', KEYS[1], 'error', ARGV[4])
  local h = redis.call('HMGET', KEYS[1], 'attempts', 'max_attempts', 'backoff_ms')
  local attempts, max = tonumber(h[1]), tonumber(h[2])
  if attempts < max then
    local backoff = tonumber(h[3]) * (2 ^ (attempts - 1))
    redis.call('HSET', KEYS[1], 'state', 'queued', 'run_at', now + backoff, 'updated', now)
    redis.call('ZADD', KEYS[5], now + backoff, ARGV[1])
    redis.call('LPUSH', KEYS[6], '1')
    event = 'retrying'
  else
    to_end('failed', KEYS[4])
    event = 'failed'
  end
end
redis.call('LTRIM', KEYS[6], 0, 999)
local ev = cjson.encode({task = ARGV[1], event = event, error = (how == 'failed') and ARGV[4] or nil})
redis.call('PUBLISH', ARGV[5], ev)
redis.call('PUBLISH', KEYS[1] .. ':events', ev)
-- Retention of ended tasks: bounded by count and age, a bounded batch per call.
local old = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[7]), 'LIMIT', 0, 100)
for _, id in ipairs(old) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('DEL', ARGV[8] .. id)
end
local extra = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6])
if extra > 0 then
  local ids = redis.call('ZRANGE', KEYS[3], 0, math.min(extra, 100) - 1)
  for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[3], id)
    redis.call('DEL', ARGV[8] .. id)
  end
end
return {1, event}
