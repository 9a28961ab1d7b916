-- queue_cancel: cancel a task. Cancellation is state: a queued or delayed
-- task ends 'cancelled' at once; a running one gets `cancel_requested`,
-- which the claim, finish, reap and hand-back scripts honour (a failure or
-- hand-back then ends it 'cancelled', never a retry), and is sent a
-- 'cancel' control message so its worker stops it sooner.
-- KEYS[1] = task hash   KEYS[2] = ready zset   KEYS[3] = delayed zset   KEYS[4] = ended zset
-- ARGV[1] = task id   ARGV[2] = queue events channel
-- Returns 'cancelled', 'signalled' (running, and a subscriber heard the
-- message), 'unheard' (running, nobody listens on its control channel),
-- 'ended' (already over) or 'missing'.
local key, ready, delayed, ended = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
want_type(ready, 'zset')
want_type(delayed, 'zset')
want_type(ended, 'zset')
local task, why = load_task(key, {})
if not task and not why then return 'missing' end
if not task then corrupt(key, why) end
if task.state == 'end' then return 'ended' end
local now = now_ms()
if task.state == 'running' then
  redis.call('HSET', key, 'cancel_requested', 1)
  if redis.call('PUBLISH', key .. ':control', 'cancel') == 0 then return 'unheard' end
  return 'signalled'
end
redis.call('ZREM', ready, ARGV[1])
redis.call('ZREM', delayed, ARGV[1])
redis.call('HSET', key, 'state', 'end', 'outcome', 'cancelled', 'ended', now, 'updated', now)
redis.call('ZADD', ended, now, ARGV[1])
publish_event(ARGV[2], key, {task = ARGV[1], event = 'cancelled'})
return 'cancelled'
