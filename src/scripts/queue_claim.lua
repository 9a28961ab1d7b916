-- queue_claim: atomically move the next ready task into the running set
-- with a lease and a fresh fencing token, counting the run now (attempts).
-- Due delayed tasks are promoted to ready first.
--
-- Every claim carries a token chosen by the worker. The claim is recorded
-- under it, so a worker that lost the reply (timeout, cut, blackhole; the
-- script may have run, or may run later when held bytes arrive) sends the
-- same token again and gets the same grant back (same fence, same attempt,
-- a fresh lease deadline) instead of a second task: a claim happens once or
-- is recovered at once, never left to a lease. A token already used for a
-- claim that is over (or handed back with queue_unclaim) claims nothing.
--
-- KEYS[1] = ready zset   KEYS[2] = delayed zset   KEYS[3] = running zset (lease deadline)
-- KEYS[4] = wake-up marker list   KEYS[5] = this claim's token key   KEYS[6] = failed zset
-- KEYS[7] = ended zset
-- ARGV[1] = task key prefix ('{ns:queue:q}:task:')   ARGV[2] = worker node id
-- ARGV[3] = lease ms   ARGV[4] = queue events channel   ARGV[5] = claim token
-- ARGV[6] = how long the token is remembered (ms)
-- Returns {id, fence, attempts, max_attempts, timeout_ms, data, next_delayed_ms,
-- next_lease_ms, token_spent, corrupt_failed}; id..data are false when
-- nothing was claimed. next_delayed_ms / next_lease_ms: until the earliest
-- delayed task is due / the earliest running lease ends (-1: none).
-- token_spent = 1 when the token belonged to an earlier claim that is over
-- (claim again with a new token). corrupt_failed: tasks moved to the failed
-- set because their record was unusable.
local ready, delayed, running, marker, token_key, failed, ended =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local prefix, node, lease, channel, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
want_type(ready, 'zset')
want_type(delayed, 'zset')
want_type(running, 'zset')
want_type(marker, 'list')
want_type(token_key, 'string')
want_type(failed, 'zset')
want_type(ended, 'zset')
local now = now_ms()
local NEEDS = {'attempts', 'max_attempts', 'fence', 'timeout_ms'}

local function grant(id, key, task)
  local data = redis.call('HGET', key, 'data')
  return {id, num_text(task.fence), num_text(task.attempts), num_text(task.max_attempts),
    num_text(task.timeout_ms), data or 'null', -1, -1, 0, 0}
end

-- A retry of a claim whose reply was lost: the same grant again.
local prev = redis.call('GET', token_key)
if prev then
  if prev ~= '' then
    local key = prefix .. prev
    local task = load_task(key, NEEDS)
    if task and task.state == 'running' and task.claim == token and redis.call('ZSCORE', running, prev) then
      -- The worker's lease starts when it sent this call: the deadline in
      -- Redis must not be earlier.
      redis.call('ZADD', running, 'XX', now + lease, prev)
      return grant(prev, key, task)
    end
  end
  return {false, false, false, false, false, false, -1, -1, 1, 0}
end

local corrupt_failed = 0
local function bad(key, id, why, from)
  fail_corrupt(key, id, why, from, failed, now, channel)
  corrupt_failed = corrupt_failed + 1
end

-- Promote due delayed tasks (a bounded batch).
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 100)
for _, id in ipairs(due) do
  local key = prefix .. id
  local task, why = load_task(key, {})
  local pscore = task and redis.call('HGET', key, 'pscore')
  if not task and not why then
    redis.call('ZREM', delayed, id) -- deleted meanwhile
  elseif not task then
    bad(key, id, why, delayed)
  elseif not count_of(pscore) then
    bad(key, id, 'field `pscore` is not a whole number: "' .. tostring(pscore) .. '"', delayed)
  else
    redis.call('ZREM', delayed, id)
    redis.call('ZADD', ready, pscore, id)
    redis.call('HSET', key, 'state', 'queued', 'updated', now)
  end
end

-- Claim the best ready task whose record is usable (a bounded number of
-- unusable ones are failed on the way).
for _ = 1, 100 do
  local id = redis.call('ZRANGE', ready, 0, 0)[1]
  if not id then break end
  local key = prefix .. id
  local task, why = load_task(key, NEEDS)
  if not task and not why then
    redis.call('ZREM', ready, id) -- a deleted task's id
  elseif not task then
    bad(key, id, why, ready)
  elseif task.state == 'end' then
    redis.call('ZREM', ready, id) -- ended meanwhile (a stale entry)
  elseif task.state ~= 'queued' then
    bad(key, id, 'in the ready set but its state is "' .. task.state .. '"', ready)
  elseif task.cancel_requested then
    -- Cancellation is state: a task cancelled on its way back to the queue
    -- never starts again.
    redis.call('ZREM', ready, id)
    redis.call('HSET', key, 'state', 'end', 'outcome', 'cancelled', 'ended', now, 'updated', now)
    redis.call('ZADD', ended, now, id)
    publish_event(channel, key, {task = id, event = 'cancelled'})
  else
    -- Everything is checked: now write.
    redis.call('ZREM', ready, id)
    task.attempts = task.attempts + 1
    task.fence = next_fence(key, task.fence, 'fence')
    redis.call('HSET', key, 'state', 'running', 'worker', node, 'claim', token,
      'attempts', num_text(task.attempts), 'started', now, 'updated', now)
    redis.call('HDEL', key, 'run_at', 'done_fence', 'done_event')
    redis.call('ZADD', running, now + lease, id)
    redis.call('SET', token_key, id, 'PX', tonumber(ARGV[6]))
    publish_event(channel, key, {task = id, event = 'started', attempt = task.attempts, node = node})
    local reply = grant(id, key, task)
    reply[10] = corrupt_failed
    return reply
  end
end

local next_delayed, next_lease = -1, -1
local first = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
if first[2] then next_delayed = math.max(tonumber(first[2]) - now, 0) end
first = redis.call('ZRANGE', running, 0, 0, 'WITHSCORES')
if first[2] then next_lease = math.max(tonumber(first[2]) - now, 0) end
return {false, false, false, false, false, false, next_delayed, next_lease, 0, corrupt_failed}
