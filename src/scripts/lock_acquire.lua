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
  fair_prune(KEYS[3], KEYS[4], now)
  fair_enqueue(KEYS[3], KEYS[4], token, now, tonumber(ARGV[4]))
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if head ~= token or redis.call('EXISTS', KEYS[1]) == 1 then
    return {0, redis.call('PTTL', KEYS[1])}
  end
  fair_leave(KEYS[3], KEYS[4], token)
  redis.call('SET', KEYS[1], token, 'PX', ttl)
  return {1, redis.call('INCR', KEYS[2]), ttl}
end
if redis.call('SET', KEYS[1], token, 'NX', 'PX', ttl) then
  return {1, redis.call('INCR', KEYS[2]), ttl}
end
return {0, redis.call('PTTL', KEYS[1])}
