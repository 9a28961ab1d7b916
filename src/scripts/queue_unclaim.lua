-- queue_unclaim: hand back a claim the worker never saw confirmed (its reply
-- was lost and the worker is stopping instead of retrying), so the task
-- runs again at once instead of after a lease. The token is spent either
-- way: a claim request still on its way (held by the network) that arrives
-- later claims nothing.
-- KEYS[1] = the claim's token key   KEYS[2] = running zset   KEYS[3] = delayed zset
-- KEYS[4] = wake-up marker list   KEYS[5] = ended zset
-- ARGV[1] = task key prefix   ARGV[2] = claim token   ARGV[3] = how long the token is remembered (ms)
-- ARGV[4] = queue events channel
-- Returns 1 if a claim was handed back, else 0.
local token_key, running, delayed, marker, ended = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
want_type(token_key, 'string')
want_type(running, 'zset')
want_type(delayed, 'zset')
want_type(marker, 'list')
want_type(ended, 'zset')
local now = now_ms()
local prev = redis.call('GET', token_key)
local task, key
if prev and prev ~= '' then
  key = ARGV[1] .. prev
  task = load_task(key, {'attempts', 'claim', 'cancel_requested'})
end
redis.call('SET', token_key, '', 'PX', tonumber(ARGV[3]))
if not (task and task.state == 'running' and task.claim == ARGV[2]) then return 0 end
redis.call('ZREM', running, prev)
local ev
if task.cancel_requested then
  redis.call('HSET', key, 'state', 'end', 'outcome', 'cancelled', 'ended', now, 'updated', now)
  redis.call('HDEL', key, 'claim')
  redis.call('ZADD', ended, now, prev)
  ev = 'cancelled'
else
  -- Never run: the attempt does not count.
  redis.call('HSET', key, 'attempts', num_text(math.max(task.attempts - 1, 0)))
  requeue_now(key, prev, delayed, marker, now)
  ev = 'requeued'
end
publish_event(ARGV[4], key, {task = prev, event = ev})
return 1
