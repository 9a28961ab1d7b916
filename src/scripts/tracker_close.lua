-- Closes task ARGV[1]: no more chunks are expected; once none is locked
-- the task is released to the consumers (at once when none is). Closing a
-- task that is not open changes nothing.
-- KEYS: 1 task record, 2 chunks hash, 3 released list
-- ARGV: 1 task, 2 info, 3 attempts, 4 processing timeout ms, 5 wake channel
-- Reply: {'released', 0} | {'waiting', chunks locked} | {'already', state}
local t = task_read(KEYS[1])
want_type(KEYS[2], 'hash')
want_type(KEYS[3], 'list')
if t and t.state ~= 'open' then return {'already', t.state} end
local now = now_ms()
redis.call('HSET', KEYS[1], 'state', 'closed', 'closed', num_text(now), 'info', ARGV[2],
  'attempts', ARGV[3], 'timeout', ARGV[4])
if not t then
  redis.call('HSET', KEYS[1], 'created', num_text(now), 'attempt', 0, 'errors', 0)
end
local n = redis.call('HLEN', KEYS[2])
if n == 0 then
  release(KEYS[1], ARGV[1], now, KEYS[3], ARGV[5])
  return {'released', 0}
end
return {'waiting', n}
