-- semaphore_leave_queue: a fair-mode waiter gives up its place.
-- KEYS[1] = waiter queue zset   KEYS[2] = waiter tickets hash
-- ARGV[1] = permit id   ARGV[2] = release channel
-- Returns 1 if it had a place, else 0; wakes waiters when it leaves.
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
want_type(KEYS[1], 'zset')
want_type(KEYS[2], 'hash')
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 1 then redis.call('PUBLISH', ARGV[2], '') end
return removed
