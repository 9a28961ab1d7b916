-- cluster_add: add a job; it waits in the pending set until the active
-- master assigns it (applied even while no master is active).
-- Idempotent by id: adding the same id with the same payload again changes
-- nothing.
-- KEYS[1] = jobs zset   KEYS[2] = pending zset   KEYS[3] = arrival counter
-- KEYS[4] = the job's hash
-- ARGV[1] = job id   ARGV[2] = payload (JSON)   ARGV[3] = masters' wake channel
-- Returns 1 added, 0 already there with this payload, -1 already there with
-- another payload (nothing changed).
want_type(KEYS[1], 'zset')
want_type(KEYS[2], 'zset')
want_counter(KEYS[3])
want_type(KEYS[4], 'hash')
local existing = redis.call('HGET', KEYS[4], 'payload')
if existing then
  if existing == ARGV[2] then return 0 end
  return -1
end
local seq = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[4], 'payload', ARGV[2], 'seq', seq, 'added', now_ms(),
  'worker', '', 'token', '')
redis.call('ZADD', KEYS[1], seq, ARGV[1])
redis.call('ZADD', KEYS[2], seq, ARGV[1])
redis.call('PUBLISH', ARGV[3], 'add')
return 1
