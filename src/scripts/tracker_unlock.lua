-- Unlocks chunk ARGV[2] of task ARGV[1]: only if held by token ARGV[3], or
-- whoever holds it when ARGV[3] is ''. The last chunk of a closed task
-- releases the task to the consumers.
-- KEYS: 1 task record, 2 chunks hash, 3 lock deadlines zset, 4 lock times zset, 5 released list
-- ARGV: 1 task, 2 chunk, 3 token or '', 4 consumers' wake channel
-- Reply: 'unlocked' | 'released' | 'unknown' (not locked) | 'not_owner'
task_read(KEYS[1])
want_type(KEYS[2], 'hash')
want_type(KEYS[3], 'zset')
want_type(KEYS[4], 'zset')
want_type(KEYS[5], 'list')
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if not holder then return 'unknown' end
if ARGV[3] ~= '' and holder ~= ARGV[3] then return 'not_owner' end
if drop_chunk(KEYS[1], KEYS[2], ARGV[1], ARGV[2], KEYS[3], KEYS[4], now_ms(), KEYS[5], ARGV[4]) then
  return 'released'
end
return 'unlocked'
