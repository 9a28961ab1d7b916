-- cluster_join: a worker joins (or rejoins after losing its lease) with a
-- new session token and a membership lease (Redis clock) that the
-- heartbeat renews while hash[session] is this token. Jobs still recorded
-- under an older session of this worker id go back to the pending set: the
-- worker already told its owner they were gone. A retry with the same
-- session (after a lost reply) only refreshes the lease.
-- KEYS[1] = cluster record   KEYS[2] = workers zset   KEYS[3] = pending zset
-- KEYS[4] = fencing counter   KEYS[5] = worker hash   KEYS[6] = worker's jobs hash
-- ARGV[1] = worker id   ARGV[2] = session token   ARGV[3] = lease ms
-- ARGV[4] = capacity (0 = unlimited)   ARGV[5] = node id   ARGV[6] = job key prefix
-- ARGV[7] = masters' wake channel   ARGV[8] = '1' to refuse a cluster no master created
-- Returns {'joined', fence floor, jobs released} or {'nocluster'}. The floor
-- is the fencing counter now: every later assignment has a larger token.
want_type(KEYS[1], 'hash')
want_type(KEYS[2], 'zset')
want_type(KEYS[3], 'zset')
local floor = want_counter(KEYS[4])
want_type(KEYS[5], 'hash')
check_release(KEYS[6], ARGV[6])
local exists = redis.call('EXISTS', KEYS[1]) == 1
if ARGV[8] == '1' and not exists then return {'nocluster'} end

local now = now_ms()
local released = 0
if redis.call('HGET', KEYS[5], 'session') ~= ARGV[2] then
  released = release(KEYS[6], ARGV[1], ARGV[6], KEYS[3])
end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[5], 'session', ARGV[2], 'capacity', ARGV[4], 'node', ARGV[5],
  'joined', now)
if exists then redis.call('HSET', KEYS[1], 'rebalance', '1') end
redis.call('PUBLISH', ARGV[7], 'join')
return {'joined', fmt(floor), released}
