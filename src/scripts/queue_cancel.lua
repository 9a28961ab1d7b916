-- queue_cancel: cancel a task. A queued or delayed task ends 'cancelled' at
-- once; a running one is sent a 'cancel' control message and ends when its
-- worker stops it (or, if the worker died, when the reaper finds it).
-- KEYS[1] = task hash   KEYS[2] = ready zset   KEYS[3] = delayed zset   KEYS[4] = ended zset
-- ARGV[1] = task id   ARGV[2] = queue events channel
-- Returns 'cancelled', 'signalled' (running), 'ended' (already over) or 'missing'.
local now = now_ms()
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return 'missing' end
if state == 'end' then return 'ended' end
if state == 'running' then
  -- Remembered, so that if the worker dies instead of stopping, the reaper
  -- ends the task cancelled rather than running it again.
  redis.call('HSET', KEYS[1], 'cancel_requested', 1)
  redis.call('PUBLISH', KEYS[1] .. ':control', 'cancel')
  return 'signalled'
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'end', 'outcome', 'cancelled', 'ended', now, 'updated', now)
redis.call('ZADD', KEYS[4], now, ARGV[1])
local ev = cjson.encode({task = ARGV[1], event = 'cancelled'})
redis.call('PUBLISH', ARGV[2], ev)
redis.call('PUBLISH', KEYS[1] .. ':events', ev)
return 'cancelled'
