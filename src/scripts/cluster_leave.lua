-- cluster_leave: a worker terminates: its jobs go back to the pending set at
-- once (no waiting for its lease to lapse) and the masters are woken to
-- reassign them.
-- KEYS[1] = workers zset   KEYS[2] = pending zset   KEYS[3] = worker hash
-- KEYS[4] = worker's jobs hash
-- ARGV[1] = worker id   ARGV[2] = session token   ARGV[3] = job key prefix
-- ARGV[4] = masters' wake channel
-- Returns the number of jobs released, or -1 when this session is no longer
-- the worker's (it was reaped or rejoined; nothing changed).
want_type(KEYS[1], 'zset')
want_type(KEYS[2], 'zset')
want_type(KEYS[3], 'hash')
check_release(KEYS[4], ARGV[3])
if redis.call('HGET', KEYS[3], 'session') ~= ARGV[2] then return -1 end
local n = release(KEYS[4], ARGV[1], ARGV[3], KEYS[2])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[4], 'leave')
return n
