-- queue_push: add tasks to a queue (ready now, or delayed until run_at), a
-- batch per call with the same options: one script, one sequence bump, one
-- wake-up and one event message for the whole batch.
-- KEYS[1] = ready zset   KEYS[2] = delayed zset   KEYS[3] = wake-up marker list
-- KEYS[4] = sequence counter
-- ARGV[1] = task key prefix   ARGV[2] = queue events channel
-- ARGV[3] = priority (0..255, higher first)   ARGV[4] = delay ms (0 = ready now)
-- ARGV[5] = max attempts   ARGV[6] = timeout ms (0 = none)   ARGV[7] = backoff ms
-- ARGV[8] = max lost runs   ARGV[9] = max backoff ms
-- ARGV[10..] = task id, data (JSON), task id, data, ...
-- Ready tasks are ordered by priority, then arrival: score = (255 - priority) * 1e12 + seq.
-- Returns the number pushed.
local ready, delayed, marker, seq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, channel = ARGV[1], ARGV[2]
want_type(ready, 'zset')
want_type(delayed, 'zset')
want_type(marker, 'list')
want_type(seq_key, 'string')
local seq0 = redis.call('GET', seq_key)
if seq0 and not count_of(seq0) then corrupt(seq_key, 'is not a whole number: "' .. seq0 .. '"') end
-- Ids are 128 random bits (random_id), so no existence check per task.
local n = (#ARGV - 9) / 2
local now = now_ms()
local last = redis.call('INCRBY', seq_key, n)
local base = (255 - tonumber(ARGV[3])) * 1e12 + last - n
local delay = tonumber(ARGV[4])
local set, members, events = ready, {}, {}
if delay > 0 then set = delayed end
for i = 0, n - 1 do
  local id, data = ARGV[10 + 2 * i], ARGV[11 + 2 * i]
  local pscore = num_text(base + i + 1)
  local fields = {'id', id, 'state', 'queued', 'data', data,
    'priority', ARGV[3], 'pscore', pscore, 'attempts', 0, 'failures', 0, 'lost', 0,
    'max_attempts', ARGV[5], 'max_lost', ARGV[8], 'timeout_ms', ARGV[6], 'backoff_ms', ARGV[7],
    'max_backoff_ms', ARGV[9], 'fence', 0, 'created', now, 'updated', now}
  if delay > 0 then
    fields[#fields + 1] = 'run_at'
    fields[#fields + 1] = num_text(now + delay)
    members[#members + 1] = num_text(now + delay)
  else
    members[#members + 1] = pscore
  end
  members[#members + 1] = id
  redis.call('HSET', prefix .. id, unpack(fields))
  events[#events + 1] = {task = id, event = 'queued'}
end
if n > 0 then
  redis.call('ZADD', set, unpack(members))
  redis.call('LPUSH', marker, '1')
  redis.call('LTRIM', marker, 0, 999)
end
publish_events(channel, events)
return n
