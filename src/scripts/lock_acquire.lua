-- lock_acquire: take a lock if it is free (and, in fair mode, if we are the
-- head of its waiter queue); the grant INCRs the fencing counter.
-- KEYS[1] = owner key (holds the owner token, PX ttl)
-- KEYS[2] = fencing counter (never expires)
-- KEYS[3] = waiter queue zset (fair mode): token -> arrival number
-- KEYS[4] = waiter tickets hash (fair mode): token -> ticket deadline (ms),
--           and field '#seq' the arrival counter
-- ARGV[1] = token   ARGV[2] = ttl ms   ARGV[3] = '1' fair, '0' not
-- ARGV[4] = ticket ttl ms (fair: how long a waiter's place is kept unrefreshed)
-- Returns {1, fencing token, ttl} when granted,
--         {0, remaining ttl of the current owner in ms (-1 if none)} when not.
local token, ttl = ARGV[1], tonumber(ARGV[2])
if ARGV[3] == '1' then
  local now = now_ms()
  -- Drop waiters at the head whose tickets lapsed (they gave up or died).
  while true do
    local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    if not head then break end
    local dl = redis.call('HGET', KEYS[4], head)
    if dl and tonumber(dl) > now then break end
    redis.call('ZREM', KEYS[3], head)
    redis.call('HDEL', KEYS[4], head)
  end
  if not redis.call('ZSCORE', KEYS[3], token) then
    redis.call('ZADD', KEYS[3], redis.call('HINCRBY', KEYS[4], '#seq', 1), token)
  end
  redis.call('HSET', KEYS[4], token, now + tonumber(ARGV[4]))
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if head ~= token or redis.call('EXISTS', KEYS[1]) == 1 then
    return {0, redis.call('PTTL', KEYS[1])}
  end
  redis.call('ZREM', KEYS[3], token)
  redis.call('HDEL', KEYS[4], token)
  if redis.call('ZCARD', KEYS[3]) == 0 then redis.call('DEL', KEYS[4]) end
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  return {1, redis.call('INCR', KEYS[2]), ttl}
end
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ttl) then
  return {1, redis.call('INCR', KEYS[2]), ttl}
end
return {0, redis.call('PTTL', KEYS[1])}
