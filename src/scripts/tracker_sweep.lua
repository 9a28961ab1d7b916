-- Times out chunk locks and processing attempts, at most ARGV[3] of each:
-- chunk locks whose deadline passed (or, with ARGV[6] != '', that were
-- taken more than ARGV[6] ms ago: the seed's timeoutLocks(age)), and
-- attempts whose processing deadline passed (another attempt, or failed).
-- Reads only what is due: O(log n + k).
-- KEYS: 1 lock deadlines zset, 2 lock times zset, 3 processing zset, 4 released list, 5 stats hash
-- ARGV: 1 task record prefix, 2 chunks hash prefix, 3 batch, 4 retention ms,
--       5 wake channel, 6 lock age ms or '', 7 'locks' | 'processing' | 'both'
-- Reply: {locks timed out, attempts timed out, ms to the next deadline or -1, more (0/1)}
want_type(KEYS[1], 'zset')
want_type(KEYS[2], 'zset')
want_type(KEYS[3], 'zset')
want_type(KEYS[4], 'list')
want_type(KEYS[5], 'hash')
local now = now_ms()
local batch = tonumber(ARGV[3])
local do_locks = ARGV[7] ~= 'processing'
local do_proc = ARGV[7] ~= 'locks'
local locks, procs = {}, {}
if do_locks then
  if ARGV[6] ~= '' then
    locks = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]), 'LIMIT', 0, batch)
  else
    locks = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, batch)
  end
end
if do_proc then
  procs = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, batch)
end
-- Validate everything first (DESIGN rule 11), then write.
local lock_items, proc_items = {}, {}
for _, member in ipairs(locks) do
  local nl = string.find(member, '\n', 1, true)
  if not nl then corrupt(KEYS[1], 'member "' .. string.sub(member, 1, 40) .. '" is not task\\nchunk') end
  local task, chunk = string.sub(member, 1, nl - 1), string.sub(member, nl + 1)
  task_read(ARGV[1] .. task)
  want_type(ARGV[2] .. task, 'hash')
  lock_items[#lock_items + 1] = {task, chunk, member}
end
for _, task in ipairs(procs) do
  proc_items[#proc_items + 1] = {task, task_read(ARGV[1] .. task)}
end
local n_locks, n_procs = 0, 0
for _, it in ipairs(lock_items) do
  local ckey = ARGV[2] .. it[1]
  if redis.call('HEXISTS', ckey, it[2]) == 1 then
    n_locks = n_locks + 1
    drop_chunk(ARGV[1] .. it[1], ckey, it[1], it[2], KEYS[1], KEYS[2], now, KEYS[4], ARGV[5])
  else
    redis.call('ZREM', KEYS[1], it[3])
    redis.call('ZREM', KEYS[2], it[3])
  end
end
for _, it in ipairs(proc_items) do
  local t = it[2]
  if t and t.state == 'processing' then
    n_procs = n_procs + 1
    end_attempt(ARGV[1] .. it[1], t, it[1], 'processing timed out', 'timeout-', now,
      KEYS[3], KEYS[4], KEYS[5], tonumber(ARGV[4]), ARGV[5])
  else
    redis.call('ZREM', KEYS[3], it[1])
  end
end
local next_dl = -1
for _, z in ipairs({KEYS[1], KEYS[3]}) do
  local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
  if first[2] then
    local left = math.max(0, tonumber(first[2]) - now)
    if next_dl < 0 or left < next_dl then next_dl = left end
  end
end
local more = 0
if #locks >= batch or #procs >= batch then more = 1 end
return {n_locks, n_procs, next_dl, more}
