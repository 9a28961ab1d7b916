-- queue_retry: give ONE failed task a fresh start, as queue_requeue_failed
-- does for a batch: attempts, handler failures and lost runs back to zero,
-- due at once. Only a task that is over and failed (in the failed set, its
-- record saying so) is touched, so a task a worker holds never is.
-- KEYS[1] = task hash   KEYS[2] = failed zset   KEYS[3] = delayed zset
-- KEYS[4] = wake-up marker list
-- ARGV[1] = task id   ARGV[2] = queue events channel
-- Returns 'requeued', 'missing' (no record) or 'not_failed' (the task is
-- queued, running or ended otherwise).
-- Errors 'CORRUPT <key>\t<reason>' (before any write) when a queue key or
-- the record has the wrong type.
local key, failed, delayed, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local id = ARGV[1]
want_type(failed, 'zset')
want_type(delayed, 'zset')
want_type(marker, 'list')
local t = redis.call('TYPE', key)['ok']
if t == 'none' then return 'missing' end
if t ~= 'hash' then corrupt(key, 'is a ' .. t .. ', not a task hash') end
local rec = redis.call('HMGET', key, 'state', 'outcome')
if not redis.call('ZSCORE', failed, id) or rec[1] ~= 'end' or rec[2] ~= 'failed' then
  return 'not_failed'
end

-- Writes.
local now = now_ms()
redis.call('ZREM', failed, id)
redis.call('HSET', key, 'attempts', 0, 'failures', 0, 'lost', 0)
redis.call('HDEL', key, 'outcome', 'ended', 'failed_by', 'done_fence', 'done_event')
requeue_now(key, id, delayed, marker, now)
publish_event(ARGV[2], key, {task = id, event = 'requeued'})
return 'requeued'
