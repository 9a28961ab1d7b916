-- lock_leave_queue: a fair-mode waiter gives up its place (timeout), and
-- wakes the next waiter if it was at the head.
-- KEYS[1] = waiter queue zset   KEYS[2] = waiter tickets hash
-- ARGV[1] = token   ARGV[2] = release channel
-- Returns 1 if it had a place, else 0.
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
want_type(KEYS[1], 'zset')
want_type(KEYS[2], 'hash')
local head = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 1 and head == ARGV[1] then
  local nxt = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if nxt then redis.call('PUBLISH', ARGV[2], nxt) end
end
return removed
