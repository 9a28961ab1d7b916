-- semaphore_release: give a permit back and wake waiters.
-- KEYS[1] = holders zset   KEYS[2] = grants hash (permit id -> fencing token)
-- ARGV[1] = permit id   ARGV[2] = release channel
-- Returns 1 if the permit was live and is now released, 0 if it had
-- already expired or been released (nothing left of it).
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
want_type(KEYS[1], 'zset')
want_type(KEYS[2], 'hash')
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
if score and tonumber(score) > now then
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
