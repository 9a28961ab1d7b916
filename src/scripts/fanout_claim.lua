-- fanout_claim: join a fan-out job: read its stored outcome, or become its
-- leader if nobody leads (or the leader's lease expired), or learn how long
-- the current leader's lease has left. Idempotent for its token: when we
-- already lead (a retry after a lost reply) it answers 'lead' again with
-- the same fencing token. Leadership is only granted when nobody leads, so
-- while a leader holds it the counter's value is that leader's token.
-- KEYS[1] = leader key (leader token, PX lease)   KEYS[2] = outcome key
-- KEYS[3] = fencing counter (kept for a day after the last grant: a later
--           one restarts from the Redis clock, which is still above it)
-- ARGV[1] = our token   ARGV[2] = leader lease ms
-- Returns {'done', outcome} | {'lead', fencing token, ms the lease has left}
--       | {'wait', leader's remaining lease ms}
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
local leader, result, fence_key = KEYS[1], KEYS[2], KEYS[3]
local token, lease = ARGV[1], tonumber(ARGV[2])
local KEEP_FENCE_MS = math.max(86400000, 2 * lease)

-- Read and check everything first.
want_type(leader, 'string')
want_type(result, 'string')
local fence = fence_current(fence_key)
local outcome = redis.call('GET', result)
if outcome then return {'done', outcome} end
local cur = redis.call('GET', leader)
local pttl = redis.call('PTTL', leader)
if cur == token then
  if fence == 0 then
    -- The counter was deleted under us: a fresh token is as good (the
    -- caller never saw the first one).
    fence = next_fence(fence_key, 0)
    redis.call('PEXPIRE', fence_key, KEEP_FENCE_MS)
  end
  return {'lead', num_text(fence), tostring(pttl)}
end
if cur then return {'wait', tostring(pttl)} end

-- Writes.
redis.call('SET', leader, token, 'PX', lease)
fence = next_fence(fence_key, fence)
redis.call('PEXPIRE', fence_key, KEEP_FENCE_MS)
return {'lead', num_text(fence), tostring(lease)}
