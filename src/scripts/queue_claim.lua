-- queue_claim: atomically move the next ready task into the running set
-- with a lease and a fresh fencing token, counting the attempt now (so a
-- task that kills its worker every time still runs out of attempts).
-- Due delayed tasks are promoted to ready first.
-- KEYS[1] = ready zset   KEYS[2] = delayed zset   KEYS[3] = running zset (lease deadline)
-- KEYS[4] = wake-up marker list
-- ARGV[1] = task key prefix ('{ns:queue:q}:task:')   ARGV[2] = worker node id
-- ARGV[3] = lease ms   ARGV[4] = queue events channel
-- Returns {id, fence, attempts, max_attempts, timeout_ms, data, next_delayed_in_ms}
-- or {false, false, ..., next_delayed_in_ms} when nothing is ready
-- (next_delayed_in_ms = -1 when no delayed task waits).
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local pscore = redis.call('HGET', ARGV[1] .. id, 'pscore')
  if pscore then
    redis.call('ZADD', KEYS[1], pscore, id)
    redis.call('HSET', ARGV[1] .. id, 'state', 'queued', 'updated', now)
  end
end
local next_delayed = -1
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then next_delayed = math.max(tonumber(first[2]) - now, 0) end
while true do
  local popped = redis.call('ZPOPMIN', KEYS[1])
  if not popped[1] then return {false, false, false, false, false, false, next_delayed} end
  local id = popped[1]
  local key = ARGV[1] .. id
  if redis.call('EXISTS', key) == 1 then
    local attempts = redis.call('HINCRBY', key, 'attempts', 1)
    local fence = redis.call('HINCRBY', key, 'fence', 1)
    redis.call('HSET', key, 'state', 'running', 'worker', ARGV[2], 'started', now, 'updated', now)
    redis.call('HDEL', key, 'run_at')
    redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), id)
    local h = redis.call('HMGET', key, 'max_attempts', 'timeout_ms', 'data')
    local ev = cjson.encode({task = id, event = 'started', attempt = attempts, node = ARGV[2]})
    redis.call('PUBLISH', ARGV[4], ev)
    redis.call('PUBLISH', key .. ':events', ev)
    return {id, fence, attempts, h[1], h[2], h[3], next_delayed}
  end
  -- a deleted task's id: skip it
end
