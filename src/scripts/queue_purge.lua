-- queue_purge: delete up to ARGV[2] tasks of the ended (or failed) set that
-- ended no later than ARGV[3], oldest first: their ids and their records.
-- Only tasks that are over are deleted. A record that is live (queued or
-- running) keeps its record: only its stale id leaves this set, so a task a
-- worker holds is never touched. A record that is not a hash (a task failed
-- as corrupt) is deleted with its id.
-- KEYS[1] = ended or failed zset
-- ARGV[1] = task key prefix   ARGV[2] = batch size   ARGV[3] = cut-off (ms, end time)
-- Returns {deleted, stale ids dropped, how many of the set are left}.
-- Errors 'CORRUPT <key>\t<reason>' (before any write) when the set has the
-- wrong type.
local set, prefix = KEYS[1], ARGV[1]
want_type(set, 'zset')
local ids = redis.call('ZRANGEBYSCORE', set, '-inf', ARGV[3], 'LIMIT', 0, tonumber(ARGV[2]))
-- Read every record's state first (DESIGN rule 11), then write.
local over = {}
for i, id in ipairs(ids) do
  local key = prefix .. id
  local t = redis.call('TYPE', key)['ok']
  over[i] = t ~= 'hash' or redis.call('HGET', key, 'state') == 'end'
end
local deleted, stale = 0, 0
for i, id in ipairs(ids) do
  redis.call('ZREM', set, id)
  if over[i] then
    redis.call('DEL', prefix .. id)
    deleted = deleted + 1
  else
    stale = stale + 1
  end
end
return {deleted, stale, redis.call('ZCARD', set)}
