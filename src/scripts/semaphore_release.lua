-- semaphore_release: give a permit back and wake waiters.
-- KEYS[1] = holders zset   KEYS[2] = grants hash (permit id -> fencing token)
-- ARGV[1] = permit id   ARGV[2] = release channel
-- Returns 1 if the permit was live and is now released, 0 if it had
-- already expired or been released (nothing left of it).
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
-- The reads' (and the HDEL's) WRONGTYPE errors stand in for TYPE checks;
-- an HDEL that fails writes nothing, so the check still comes before the
-- first write.
local score = read_typed(KEYS[1], 'zset', 'ZSCORE', KEYS[1], ARGV[1])
read_typed(KEYS[2], 'hash', 'HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
local now = now_ms()
if score and tonumber(score) > now then
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
