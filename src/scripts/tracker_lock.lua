-- Locks chunk ARGV[2] of task ARGV[1] for owner token ARGV[3] until
-- now + ARGV[4] ms (renewed by the heartbeat unless fixed). Allowed while
-- the task is open or closed (not yet released); idempotent for the same
-- token (a retry after a lost reply renews the same lock).
-- KEYS: 1 task record, 2 chunks hash, 3 lock deadlines zset, 4 lock times zset
-- ARGV: 1 task, 2 chunk, 3 token, 4 ttl ms, 5 sweep channel
-- Reply: {'locked', state} | {'busy', ms left or -1} | {'refused', state}
local t = task_read(KEYS[1])
want_type(KEYS[2], 'hash')
want_type(KEYS[3], 'zset')
want_type(KEYS[4], 'zset')
if t and t.state ~= 'open' and t.state ~= 'closed' then
  return {'refused', t.state}
end
local member = ARGV[1] .. '\n' .. ARGV[2]
local holder = redis.call('HGET', KEYS[2], ARGV[2])
local now = now_ms()
if holder and holder ~= ARGV[3] then
  local dl = redis.call('ZSCORE', KEYS[3], member)
  return {'busy', dl and math.max(0, tonumber(dl) - now) or -1}
end
if not t then
  redis.call('HSET', KEYS[1], 'state', 'open', 'created', num_text(now), 'attempt', 0, 'errors', 0)
end
if not holder then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[4], now, member)
end
add_deadline(KEYS[3], member, now + tonumber(ARGV[4]), ARGV[5])
return {'locked', t and t.state or 'open'}
