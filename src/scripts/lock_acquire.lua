-- lock_acquire: take a lock if it is free (and, in fair mode, if we are the
-- head of its waiter queue); the grant takes the next fencing token.
-- Idempotent for its token: when the lock is already ours (a retry after a
-- lost reply), it returns the same grant and fencing token and writes
-- nothing. A lock is only granted when free, so while its grantee holds it
-- the fencing counter's value is that grant's token: no grant record needed.
-- KEYS[1] = owner key (holds the owner token, PX ttl)
-- KEYS[2] = fencing counter (never expires)
-- KEYS[3] = waiter queue zset (fair mode): token -> arrival number
-- KEYS[4] = waiter tickets hash (fair mode): token -> ticket deadline (ms),
--           and field '#seq' the arrival counter
-- ARGV[1] = token   ARGV[2] = ttl ms   ARGV[3] = '1' fair, '0' not
-- ARGV[4] = ticket ttl ms (fair: how long a waiter's place is kept unrefreshed)
-- Returns {1, fencing token, ms the grant has left} when granted (or already ours),
--         {0, remaining ttl of the current owner in ms (-1 if none)} when not.
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
local owner, fence_key, queue, tickets = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, ttl, fair = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'

-- Read and check everything first.
local holder = read_typed(owner, 'string', 'GET', owner)
local fence = fence_current(fence_key)
-- Only a held lock needs its remaining time (the free path skips it).
local pttl = holder and redis.call('PTTL', owner) or -2
if holder == token then
  -- The counter was deleted under the lock: a fresh token is as good (the
  -- caller never saw the first one).
  if fence == 0 then fence = next_fence(fence_key, 0) end
  return {1, fence, pttl}
end
local now, gone
if fair then
  now = now_ms()
  gone = fair_check(queue, tickets, now)
end

-- Writes.
if fair then
  fair_drop(queue, tickets, gone)
  fair_enqueue(queue, tickets, token, now, tonumber(ARGV[4]))
  local head = redis.call('ZRANGE', queue, 0, 0)[1]
  if head ~= token or holder then
    return {0, pttl}
  end
  fair_leave(queue, tickets, token)
elseif holder then
  return {0, pttl}
end
redis.call('SET', owner, token, 'PX', ttl)
return {1, next_fence(fence_key, fence), ttl}
