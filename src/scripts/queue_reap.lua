-- queue_reap: re-queue (or fail, after max attempts) tasks whose lease ran
-- out: their worker died, hung or was cut off. Works from the running zset
-- by deadline, a bounded batch per call (O(log n + k)). Atomic, so two
-- reapers never re-queue one task twice.
-- KEYS[1] = running zset   KEYS[2] = delayed zset   KEYS[3] = failed zset
-- KEYS[4] = wake-up marker list   KEYS[5] = ended zset
-- ARGV[1] = task key prefix   ARGV[2] = batch size   ARGV[3] = queue events channel
-- A task whose cancellation was requested while it ran ends 'cancelled'.
-- Returns {requeued, failed}.
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local requeued, failed = 0, 0
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. id
  local h = redis.call('HMGET', key, 'attempts', 'max_attempts', 'worker', 'cancel_requested')
  if h[1] then
    local ev
    if h[4] then
      redis.call('HSET', key, 'state', 'end', 'outcome', 'cancelled', 'ended', now, 'updated', now)
      redis.call('ZADD', KEYS[5], now, id)
      ev = cjson.encode({task = id, event = 'cancelled'})
    elseif tonumber(h[1]) >= tonumber(h[2]) then
      redis.call('HSET', key, 'state', 'end', 'outcome', 'failed', 'ended', now, 'updated', now,
        'error', 'lease expired on attempt ' .. h[1] .. ' (worker ' .. (h[3] or '?') .. ' died or was cut off)')
      redis.call('ZADD', KEYS[3], now, id)
      failed = failed + 1
      ev = cjson.encode({task = id, event = 'failed', error = 'lease expired'})
    else
      redis.call('HSET', key, 'state', 'queued', 'run_at', now, 'updated', now)
      redis.call('ZADD', KEYS[2], now, id)
      redis.call('LPUSH', KEYS[4], '1')
      requeued = requeued + 1
      ev = cjson.encode({task = id, event = 'requeued'})
    end
    redis.call('PUBLISH', ARGV[3], ev)
    redis.call('PUBLISH', key .. ':events', ev)
  end
end
redis.call('LTRIM', KEYS[4], 0, 999)
return {requeued, failed}
