-- cluster_delete: delete a job (a master's delete_job, or a worker's
-- job.delete() guarded by its fencing token). Applied even while no master
-- is active; the job's worker gets a 'delete' message.
-- KEYS[1] = jobs zset   KEYS[2] = pending zset   KEYS[3] = the job's hash
-- ARGV[1] = job id   ARGV[2] = fencing token the caller holds ('' = any)
-- ARGV[3] = worker key prefix   ARGV[4] = masters' wake channel
-- Returns 1 deleted, 0 no such job, -1 the job is no longer assigned under
-- that token (nothing changed).
want_type(KEYS[1], 'zset')
want_type(KEYS[2], 'zset')
want_type(KEYS[3], 'hash')
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local h = redis.call('HMGET', KEYS[3], 'worker', 'token')
local w, token = h[1] or '', h[2] or ''
if ARGV[2] ~= '' and token ~= ARGV[2] then return -1 end
if w ~= '' then want_type(ARGV[3] .. w .. ':jobs', 'hash') end

if w ~= '' then
  redis.call('HDEL', ARGV[3] .. w .. ':jobs', ARGV[1])
  redis.call('PUBLISH', ARGV[3] .. w .. ':events',
    cjson.encode({op = 'delete', id = ARGV[1], token = token, reason = 'deleted'}))
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('PUBLISH', ARGV[4], 'delete')
return 1
