-- semaphore_acquire: take a permit if fewer than `permits` live permits
-- exist (and, in fair mode, if we are among the first free-slot waiters).
-- Expired permits (deadline <= now, Redis clock) are dropped first, so a
-- crashed holder's permit comes back by itself. Idempotent for its permit
-- id: when that permit is already live (a retry after a lost reply), it
-- returns the same grant and fencing token.
-- KEYS[1] = holders zset: permit id -> lease deadline (ms)
-- KEYS[2] = fencing counter
-- KEYS[3] = waiter queue zset (fair): permit id -> arrival number
-- KEYS[4] = waiter tickets hash (fair): permit id -> ticket deadline; '#seq'
-- KEYS[5] = grants hash: permit id -> its fencing token
-- ARGV[1] = permit id   ARGV[2] = permits   ARGV[3] = ttl ms
-- ARGV[4] = '1' fair, '0' not   ARGV[5] = ticket ttl ms
-- Returns {1, fencing token, ms the permit has left} when granted (or already ours),
--         {0, ms until the earliest permit expires (-1 if unknown)} when not.
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
local holders, fence_key, queue, tickets, grants = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, permits, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fair = ARGV[4] == '1'

-- Read and check everything first (each read's WRONGTYPE stands in for a
-- TYPE check).
local mine = read_typed(holders, 'zset', 'ZSCORE', holders, id)
local granted = read_typed(grants, 'hash', 'HGET', grants, id)
local fence = fence_current(fence_key)
local now = now_ms()
if granted and not count_of(granted) then
  corrupt(grants, 'fencing token of permit `' .. id .. '` is not a whole number: "' .. string.sub(granted, 1, 40) .. '"')
end
if mine and tonumber(mine) > now then
  local f = count_of(granted or '')
  if not f then
    -- Its record was deleted under it: a fresh token is as good (the
    -- caller never saw the first one).
    f = next_fence(fence_key, fence)
    redis.call('HSET', grants, id, num_text(f))
  end
  return {1, f, tonumber(mine) - now}
end
local expired = redis.call('ZRANGEBYSCORE', holders, '-inf', now)
local held = redis.call('ZCARD', holders) - #expired
local gone
if fair then gone = fair_check(queue, tickets, now) end

-- Writes.
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', holders, '-inf', now)
  for i = 1, #expired, 100 do
    redis.call('HDEL', grants, unpack(expired, i, math.min(i + 99, #expired)))
  end
end
local function busy()
  local first = redis.call('ZRANGE', holders, 0, 0, 'WITHSCORES')
  if first[2] then return {0, math.max(tonumber(first[2]) - now, 0)} end
  return {0, -1}
end
if fair then
  fair_drop(queue, tickets, gone)
  fair_enqueue(queue, tickets, id, now, tonumber(ARGV[5]))
  local rank = redis.call('ZRANK', queue, id)
  if rank >= permits - held then return busy() end
  fair_leave(queue, tickets, id)
elseif held >= permits then
  return busy()
end
redis.call('ZADD', holders, num_text(now + ttl), id)
local f = next_fence(fence_key, fence)
redis.call('HSET', grants, id, num_text(f))
return {1, f, ttl}
