-- semaphore_extend: push a live permit's deadline to now + ttl; an expired
-- permit is never revived.
-- KEYS[1] = holders zset   ARGV[1] = permit id   ARGV[2] = ttl ms
-- Returns 1 extended, 0 expired or released.
-- Errors 'CORRUPT <key>\t<reason>' (nothing written) on unusable data.
want_type(KEYS[1], 'zset')
local now = now_ms()
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) > now then
  redis.call('ZADD', KEYS[1], 'XX', num_text(now + tonumber(ARGV[2])), ARGV[1])
  return 1
end
return 0
