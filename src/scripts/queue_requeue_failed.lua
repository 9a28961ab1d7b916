-- queue_requeue_failed: give failed tasks a fresh set of attempts.
-- KEYS[1] = failed zset   KEYS[2] = delayed zset   KEYS[3] = wake-up marker list
-- ARGV[1] = task key prefix   ARGV[2] = max tasks   ARGV[3] = queue events channel
-- Returns how many were re-queued.
local now = now_ms()
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[2]) - 1)
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'state', 'queued', 'attempts', 0, 'run_at', now, 'updated', now)
    redis.call('HDEL', key, 'outcome', 'ended')
    redis.call('ZADD', KEYS[2], now, id)
    redis.call('LPUSH', KEYS[3], '1')
    redis.call('PUBLISH', ARGV[3], cjson.encode({task = id, event = 'requeued'}))
  end
end
redis.call('LTRIM', KEYS[3], 0, 999)
return #ids
