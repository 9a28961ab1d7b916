-- semaphore_acquire: take a permit if fewer than `permits` live permits
-- exist (and, in fair mode, if we are among the first free-slot waiters).
-- Expired permits (deadline <= now, Redis clock) are dropped first, so a
-- crashed holder's permit comes back by itself.
-- KEYS[1] = holders zset: permit id -> lease deadline (ms)
-- KEYS[2] = fencing counter
-- KEYS[3] = waiter queue zset (fair): permit id -> arrival number
-- KEYS[4] = waiter tickets hash (fair): permit id -> ticket deadline; '#seq'
-- ARGV[1] = permit id   ARGV[2] = permits   ARGV[3] = ttl ms
-- ARGV[4] = '1' fair, '0' not   ARGV[5] = ticket ttl ms
-- Returns {1, fencing token, holders after grant} when granted,
--         {0, ms until the earliest permit expires (-1 if unknown)} when not.
local now = now_ms()
local id, permits, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
local function busy()
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  if first[2] then return {0, math.max(tonumber(first[2]) - now, 0)} end
  return {0, -1}
end
if ARGV[4] == '1' then
  fair_prune(KEYS[3], KEYS[4], now)
  fair_enqueue(KEYS[3], KEYS[4], id, now, tonumber(ARGV[5]))
  local rank = redis.call('ZRANK', KEYS[3], id)
  if rank >= permits - held then return busy() end
  fair_leave(KEYS[3], KEYS[4], id)
elseif held >= permits then
  return busy()
end
redis.call('ZADD', KEYS[1], now + ttl, id)
return {1, redis.call('INCR', KEYS[2]), held + 1}
