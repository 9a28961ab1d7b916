-- queue_requeue_failed: give failed tasks a fresh start: attempts, handler
-- failures and lost runs back to zero, any old cancellation request gone.
-- A record that is not a task hash stays in the failed set.
-- KEYS[1] = failed zset   KEYS[2] = delayed zset   KEYS[3] = wake-up marker list
-- ARGV[1] = task key prefix   ARGV[2] = max tasks   ARGV[3] = queue events channel
-- Returns how many were re-queued.
local failed, delayed, marker = KEYS[1], KEYS[2], KEYS[3]
want_type(failed, 'zset')
want_type(delayed, 'zset')
want_type(marker, 'list')
local now = now_ms()
local ids = redis.call('ZRANGE', failed, 0, tonumber(ARGV[2]) - 1)
local n = 0
for _, id in ipairs(ids) do
  local key = ARGV[1] .. id
  local t = redis.call('TYPE', key)['ok']
  if t == 'none' then
    redis.call('ZREM', failed, id)
  elseif t == 'hash' then
    redis.call('ZREM', failed, id)
    redis.call('HSET', key, 'attempts', 0, 'failures', 0, 'lost', 0)
    redis.call('HDEL', key, 'outcome', 'ended', 'failed_by', 'done_fence', 'done_event')
    requeue_now(key, id, delayed, marker, now)
    publish_event(ARGV[3], key, {task = id, event = 'requeued'})
    n = n + 1
  end
end
return n
