-- fanout_complete: the leader stores the outcome, steps down and tells every
-- waiter (the message carries the outcome, so waiters need no extra read).
-- KEYS[1] = leader key   KEYS[2] = outcome key
-- ARGV[1] = leader token   ARGV[2] = outcome (JSON)   ARGV[3] = outcome ttl ms
-- ARGV[4] = done channel
-- Returns 1 published, 0 when another leader took over after our lease
-- lapsed (it will publish; ours is not stored).
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
want_type(KEYS[1], 'string')
want_type(KEYS[2], 'string')
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
if cur then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[4], ARGV[2])
return 1
