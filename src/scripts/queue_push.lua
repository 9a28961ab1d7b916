-- queue_push: add one task to a queue (ready now, or delayed until run_at).
-- KEYS[1] = task hash   KEYS[2] = ready zset   KEYS[3] = delayed zset
-- KEYS[4] = wake-up marker list   KEYS[5] = sequence counter
-- ARGV[1] = task id   ARGV[2] = data (JSON)   ARGV[3] = priority (0..255, higher first)
-- ARGV[4] = delay ms (0 = ready now)   ARGV[5] = max attempts   ARGV[6] = timeout ms (0 = none)
-- ARGV[7] = backoff ms   ARGV[8] = queue events channel
-- Ready tasks are ordered by priority, then arrival: score = (255 - priority) * 1e12 + seq.
-- Returns 1, or an error if the id exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('TASK_EXISTS ' .. ARGV[1])
end
local now = now_ms()
local seq = redis.call('INCR', KEYS[5])
local pscore = (255 - tonumber(ARGV[3])) * 1e12 + seq
local delay = tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'state', 'queued', 'data', ARGV[2],
  'priority', ARGV[3], 'pscore', string.format('%.0f', pscore), 'attempts', 0,
  'max_attempts', ARGV[5], 'timeout_ms', ARGV[6], 'backoff_ms', ARGV[7],
  'fence', 0, 'created', now, 'updated', now)
if delay > 0 then
  redis.call('HSET', KEYS[1], 'run_at', now + delay)
  redis.call('ZADD', KEYS[3], now + delay, ARGV[1])
else
  redis.call('ZADD', KEYS[2], pscore, ARGV[1])
end
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 999)
redis.call('PUBLISH', ARGV[8], cjson.encode({task = ARGV[1], event = 'queued'}))
return 1
