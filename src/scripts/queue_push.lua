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
--
-- The record holds only what differs from the defaults load_task() and
-- TaskInfo read for a missing counter (attempts, failures, lost: 0;
-- timeout_ms: 0; max_lost: 10; max_backoff_ms: 1 h; updated: created):
-- fewer fields, less Redis time per task.
--
-- Ids are 128 random bits (random_id), so there is no existence check per
-- task. The queue keys' types are checked by the writes themselves, in an
-- order where a failing one has written nothing that matters: the sequence
-- bump first (the only write before the sets), then the ready/delayed set,
-- then the records.
local ready, delayed, marker, seq_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local prefix, channel = ARGV[1], ARGV[2]
local function checked(key, what, ...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r['err'] then
    -- Only a wrong type is corrupt data; anything else (an ACL denial,
    -- OOM) is raised as it is.
    if string.find(r['err'], 'WRONGTYPE', 1, true) then corrupt(key, what .. ': ' .. r['err']) end
    error(r)
  end
  return r
end
local n = (#ARGV - 9) / 2
if n < 1 then return 0 end
local last = checked(seq_key, 'not a sequence counter', 'INCRBY', seq_key, n)
local now = now_ms()
local base = (255 - tonumber(ARGV[3])) * 1e12 + last - n
local delay = tonumber(ARGV[4])
local set = ready
if delay > 0 then set = delayed end
-- The options' fields, the same for every task of the batch.
local common = {'state', 'queued', 'priority', ARGV[3], 'max_attempts', ARGV[5],
  'backoff_ms', ARGV[7], 'fence', '0', 'created', now}
if ARGV[6] ~= '0' then common[#common + 1] = 'timeout_ms'; common[#common + 1] = ARGV[6] end
if ARGV[8] ~= '10' then common[#common + 1] = 'max_lost'; common[#common + 1] = ARGV[8] end
if ARGV[9] ~= '3600000' then common[#common + 1] = 'max_backoff_ms'; common[#common + 1] = ARGV[9] end
if delay > 0 then common[#common + 1] = 'run_at'; common[#common + 1] = num_text(now + delay) end
local members, events = {}, {}
for i = 0, n - 1 do
  members[#members + 1] = (delay > 0) and num_text(now + delay) or num_text(base + i + 1)
  members[#members + 1] = ARGV[10 + 2 * i]
end
checked(set, 'not a task set', 'ZADD', set, unpack(members))
local nc = #common
for i = 0, n - 1 do
  local id = ARGV[10 + 2 * i]
  common[nc + 1] = 'data'
  common[nc + 2] = ARGV[11 + 2 * i]
  common[nc + 3] = 'pscore'
  common[nc + 4] = num_text(base + i + 1)
  redis.call('HSET', prefix .. id, unpack(common))
  events[i + 1] = {task = id, event = 'queued'}
end
-- Wakes a blocked worker (the claim wakes the next while work is left).
if checked(marker, 'not a wake-up list', 'LPUSH', marker, '1') > 1000 then
  redis.call('LTRIM', marker, 0, 999)
end
publish_events(channel, events)
return n
