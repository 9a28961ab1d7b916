-- queue_push: add one task to a queue (ready now, or delayed until run_at).
-- KEYS[1] = task hash   KEYS[2] = ready zset   KEYS[3] = delayed zset
-- KEYS[4] = wake-up marker list   KEYS[5] = sequence counter
-- ARGV[1] = task id   ARGV[2] = data (JSON)   ARGV[3] = priority (0..255, higher first)
-- ARGV[4] = delay ms (0 = ready now)   ARGV[5] = max attempts   ARGV[6] = timeout ms (0 = none)
-- ARGV[7] = backoff ms   ARGV[8] = queue events channel   ARGV[9] = max lost runs
-- ARGV[10] = max backoff ms
-- Ready tasks are ordered by priority, then arrival: score = (255 - priority) * 1e12 + seq.
-- Returns 1, or an error if the id exists.
local key, ready, delayed, marker, seq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
want_type(ready, 'zset')
want_type(delayed, 'zset')
want_type(marker, 'list')
want_type(seq_key, 'string')
local seq0 = redis.call('GET', seq_key)
if seq0 and not count_of(seq0) then corrupt(seq_key, 'is not a whole number: "' .. seq0 .. '"') end
if redis.call('EXISTS', key) == 1 then
  return redis.error_reply('TASK_EXISTS ' .. ARGV[1])
end
local now = now_ms()
local seq = redis.call('INCR', seq_key)
local pscore = (255 - tonumber(ARGV[3])) * 1e12 + seq
local delay = tonumber(ARGV[4])
redis.call('HSET', key, 'id', ARGV[1], 'state', 'queued', 'data', ARGV[2],
  'priority', ARGV[3], 'pscore', num_text(pscore), 'attempts', 0, 'failures', 0, 'lost', 0,
  'max_attempts', ARGV[5], 'max_lost', ARGV[9], 'timeout_ms', ARGV[6], 'backoff_ms', ARGV[7],
  'max_backoff_ms', ARGV[10], 'fence', 0, 'created', now, 'updated', now)
if delay > 0 then
  redis.call('HSET', key, 'run_at', now + delay)
  redis.call('ZADD', delayed, now + delay, ARGV[1])
else
  redis.call('ZADD', ready, pscore, ARGV[1])
end
redis.call('LPUSH', marker, '1')
redis.call('LTRIM', marker, 0, 999)
redis.call('PUBLISH', ARGV[8], cjson.encode({task = ARGV[1], event = 'queued'}))
return 1
