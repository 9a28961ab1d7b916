-- fanout_claim: join a fan-out job: read its stored outcome, or become its
-- leader if nobody leads (or the leader's lease expired), or learn how long
-- the current leader's lease has left.
-- KEYS[1] = leader key (leader token, PX lease)   KEYS[2] = outcome key
-- ARGV[1] = our token   ARGV[2] = leader lease ms
-- Returns {'done', outcome} | {'lead'} | {'wait', leader's remaining lease ms}
local outcome = redis.call('GET', KEYS[2])
if outcome then return {'done', outcome} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  return {'lead'}
end
return {'wait', tostring(redis.call('PTTL', KEYS[1]))}
