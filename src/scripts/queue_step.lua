-- queue_step: one round trip of a worker — settle the outcomes its threads
-- reported, re-queue expired leases (a bounded batch), then claim up to
-- `want` tasks for its idle threads. Each part is the same atomic
-- transition it would be alone (DESIGN rule 1); one call carries many so
-- that a busy worker pays one round trip and one script for a whole batch
-- (as BullMQ's move-to-finished fetches the next job).
--
-- Finishing: only the claim holding a task's current fencing token ends it;
-- a stale claim (older token) is rejected, so a worker that was paused or
-- cut off past its lease cannot overwrite the new attempt. Idempotent: the
-- same claim finishing again (a retry after a lost reply) gets the first
-- answer back and changes nothing. Handler failures (and timeouts) count
-- against max_attempts, with capped exponential backoff and jitter; when
-- cancellation was requested, a failure or hand-back ends the task
-- 'cancelled' (a completed run still ends 'ok').
--
-- Claiming: every claim carries a token chosen by the worker; the ids it
-- claimed are recorded under it, so a worker that lost the reply (timeout,
-- cut, blackhole; the script may have run, or may run later when held bytes
-- arrive) sends the same token again and gets the same grants back (same
-- fences, same attempts, fresh lease deadlines) instead of more tasks: a
-- claim happens once or is recovered at once, never left to a lease. A
-- token already used for a claim that is over (or handed back with
-- queue_unclaim) claims nothing. With want = 0 the token is not looked at.
--
-- KEYS[1..6] = ready, delayed, running zsets, wake-up marker list, failed,
--              ended zsets   KEYS[7] = this claim's token key
-- ARGV[1] = task key prefix   ARGV[2] = worker node id   ARGV[3] = lease ms
-- ARGV[4] = queue events channel   ARGV[5] = claim token
-- ARGV[6] = how long the token is remembered (ms)   ARGV[7] = want (tasks to claim)
-- ARGV[8] = keep at most this many ended tasks   ARGV[9] = keep them this many ms
-- ARGV[10] = reap batch   ARGV[11] = number of reports, then per report:
--   task id, fencing token, how ('ok' | 'failed' | 'cancelled' | 'handback' |
--   'corrupt'), result (ok) or error text, jitter (a fraction in [0, 1))
-- Returns {finishes, grants, next_delayed_ms, next_lease_ms, token_spent, corrupt_failed}:
--   finishes: per report {1, event, error text} when applied ('completed',
--     'retrying', 'failed', 'cancelled', 'requeued'), {0, current state} when stale;
--   grants: per claimed task {id, fence, attempts, max_attempts, timeout_ms, data};
--   next_delayed_ms / next_lease_ms: until the earliest delayed task is due /
--     the earliest running lease ends (-1: none; only when fewer than `want`
--     were claimed); token_spent = 1 when the token belonged to an earlier
--     claim that is over; corrupt_failed: tasks moved to the failed set
--     because their record was unusable.
local Q = queue_keys(1)
local token_key = KEYS[7]
want_type(token_key, 'string')
local prefix, node, lease, channel, token = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local token_ttl, want = tonumber(ARGV[6]), tonumber(ARGV[7])
local keep_n, keep_ms, reap_batch = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local nreports = tonumber(ARGV[11])
local now = now_ms()
local events = {}
local corrupt_failed = 0
-- Written in one call each after the reports: ids leaving the running set,
-- and score/id pairs entering the ended set.
local leaving, ended_now = {}, {}

-- Settles one report; returns the reply entry.
local function finish(id, fence_arg, how, text, jitter)
  jitter = tonumber(jitter) or 0
  if jitter < 0 or jitter >= 1 then jitter = 0 end
  local key = prefix .. id
  -- The ok path (the hot one) reads only what fencing needs; the others
  -- read their counters too, still before any write.
  local task, why = load_task(key, {'fence', 'cancel_requested', 'done_fence', 'done_event'})
  if task and how ~= 'ok' then
    local more
    more, why = load_task(key, {'attempts', 'max_attempts', 'failures', 'backoff_ms', 'max_backoff_ms'})
    if more then
      for k, v in pairs(more) do task[k] = v end
    else
      task = nil
    end
  end
  if not task and not why then return {0, 'missing'} end
  if not task then
    -- Unusable record: end it as corrupt if this caller may (it holds the
    -- claim, or the record is beyond checking and the task is running).
    local ours
    if redis.call('TYPE', key)['ok'] == 'hash' then
      local raw = redis.call('HMGET', key, 'fence', 'state')
      ours = raw[1] == fence_arg and raw[2] == 'running'
    else
      ours = redis.call('ZSCORE', Q.running, id) ~= false
    end
    if not ours then return {0, 'corrupt'} end
    corrupt_failed = corrupt_failed + 1
    return {1, 'failed', fail_corrupt(key, id, why, Q.running, Q.failed, now, channel)}
  end
  local current = num_text(task.fence)
  if current == fence_arg and task.state ~= 'running' and task.done_fence == fence_arg and task.done_event then
    return {1, task.done_event, redis.call('HGET', key, 'error') or ''}
  end
  if current ~= fence_arg or task.state ~= 'running' then
    return {0, task.state}
  end

  -- Checked: now write. Out of the running set with the batch below.
  leaving[#leaving + 1] = id
  local event, err_text = nil, ''
  -- (The `claim` field stays on an ended task: it is only read with
  -- state 'running'.)
  local function to_end(outcome, set, ...)
    redis.call('HSET', key, 'state', 'end', 'outcome', outcome, 'ended', now, 'updated', now, ...)
    if set == Q.ended then
      ended_now[#ended_now + 1] = now
      ended_now[#ended_now + 1] = id
    else
      redis.call('ZADD', set, now, id)
    end
  end
  if how == 'ok' then
    to_end('ok', Q.ended, 'result', text, 'done_fence', fence_arg, 'done_event', 'completed')
    event = 'completed'
  elseif how == 'cancelled' or ((how == 'failed' or how == 'handback') and task.cancel_requested) then
    to_end('cancelled', Q.ended, 'done_fence', fence_arg, 'done_event', 'cancelled')
    event = 'cancelled'
  elseif how == 'handback' then
    -- Not the task's fault: the run does not count.
    redis.call('HSET', key, 'attempts', num_text(math.max(task.attempts - 1, 0)))
    requeue_now(key, id, Q.delayed, Q.marker, now)
    event = 'requeued'
  elseif how == 'corrupt' then
    err_text = text
    to_end('failed', Q.failed, 'error', text, 'failed_by', 'corrupt')
    event = 'failed'
  else
    err_text = text
    local failures = task.failures + 1
    redis.call('HSET', key, 'error', text, 'failures', num_text(failures))
    if failures < task.max_attempts then
      -- Exponential backoff, capped, with jitter: between half and all of
      -- min(backoff * 2^(failures - 1), max_backoff). The exponent is capped
      -- so that a zero backoff never meets an infinite factor.
      local base = math.min(task.backoff_ms * 2 ^ math.min(failures - 1, 62), task.max_backoff_ms)
      local delay = math.floor(base / 2 + jitter * base / 2)
      redis.call('HSET', key, 'state', 'queued', 'run_at', num_text(now + delay), 'updated', now)
      redis.call('HDEL', key, 'claim')
      redis.call('ZADD', Q.delayed, now + delay, id)
      -- Wakes a blocked worker, which learns the new earliest due time.
      redis.call('LPUSH', Q.marker, '1')
      redis.call('LTRIM', Q.marker, 0, 999)
      event = 'retrying'
    else
      to_end('failed', Q.failed, 'failed_by', 'handler')
      event = 'failed'
    end
  end
  -- What this claim's report did, for a retry of it (ended tasks got it
  -- with their to_end write).
  if event ~= 'completed' and event ~= 'cancelled' then
    redis.call('HSET', key, 'done_fence', fence_arg, 'done_event', event)
  end
  events[#events + 1] = {task = id, event = event, error = (err_text ~= '') and err_text or nil}
  return {1, event, err_text}
end

local finishes = {}
local a = 12
for i = 1, nreports do
  finishes[i] = finish(ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  a = a + 5
end
if #leaving > 0 then redis.call('ZREM', Q.running, unpack(leaving)) end
if #ended_now > 0 then redis.call('ZADD', Q.ended, unpack(ended_now)) end
if nreports > 0 then
  -- Retention of ended tasks: bounded by count and age, a bounded batch per call.
  local old = redis.call('ZRANGEBYSCORE', Q.ended, '-inf', now - keep_ms, 'LIMIT', 0, 100)
  local extra = redis.call('ZCARD', Q.ended) - #old - keep_n
  if extra > 0 then
    local more = redis.call('ZRANGE', Q.ended, #old, #old + math.min(extra, 100) - 1)
    for _, oid in ipairs(more) do old[#old + 1] = oid end
  end
  if #old > 0 then
    local keys = {}
    for i, oid in ipairs(old) do keys[i] = prefix .. oid end
    redis.call('ZREM', Q.ended, unpack(old))
    redis.call('DEL', unpack(keys))
  end
end

-- Expired leases of other workers (busy workers reap as they go, so a dead
-- worker's tasks run again within a lease whoever is left).
reap_expired(Q, prefix, channel, now, reap_batch, events)

local NEEDS = {'attempts', 'max_attempts', 'fence', 'timeout_ms', 'data', 'run_at', 'cancel_requested'}
local function grant(id, task)
  return {id, num_text(task.fence), num_text(task.attempts), num_text(task.max_attempts),
    num_text(task.timeout_ms), task.data or 'null'}
end

local grants = {}
local token_spent = 0
local next_delayed, next_lease = -1, -1
if want > 0 then
  local prev = redis.call('GET', token_key)
  if prev then
    -- A retry of a claim whose reply was lost: the same grants again.
    if prev == '' then token_spent = 1 end
    for id in string.gmatch(prev, '%S+') do
      local key = prefix .. id
      local task = load_task(key, {'attempts', 'max_attempts', 'fence', 'timeout_ms', 'data', 'claim'})
      if task and task.state == 'running' and task.claim == token and redis.call('ZSCORE', Q.running, id) then
        -- The worker's lease starts when it sent this call: the deadline in
        -- Redis must not be earlier.
        redis.call('ZADD', Q.running, 'XX', now + lease, id)
        grants[#grants + 1] = grant(id, task)
      end
    end
    if #grants == 0 then token_spent = 1 end
    want = 0
  end
end

if want > 0 then
  -- Promote due delayed tasks (a bounded batch).
  local due = redis.call('ZRANGEBYSCORE', Q.delayed, '-inf', now, 'LIMIT', 0, math.max(100, want))
  for _, id in ipairs(due) do
    local key = prefix .. id
    local task, why = load_task(key, {'pscore'})
    if not task and not why then
      redis.call('ZREM', Q.delayed, id) -- deleted meanwhile
    elseif not task then
      fail_corrupt(key, id, why, Q.delayed, Q.failed, now, channel)
      corrupt_failed = corrupt_failed + 1
    elseif not count_of(task.pscore) then
      fail_corrupt(key, id, 'field `pscore` is not a whole number: "' .. tostring(task.pscore) .. '"',
        Q.delayed, Q.failed, now, channel)
      corrupt_failed = corrupt_failed + 1
    else
      redis.call('ZREM', Q.delayed, id)
      redis.call('ZADD', Q.ready, task.pscore, id)
      redis.call('HSET', key, 'state', 'queued', 'updated', now)
    end
  end

  -- Claim the best ready tasks whose records are usable (a bounded number
  -- of unusable ones are failed on the way).
  local claimed, leases = {}, {}
  local fence_floor = now_us()
  local looked = 0
  while #claimed < want and looked < want + 100 do
    local ids = redis.call('ZRANGE', Q.ready, 0, want - #claimed - 1)
    if #ids == 0 then break end
    redis.call('ZREM', Q.ready, unpack(ids))
    for _, id in ipairs(ids) do
      looked = looked + 1
      local key = prefix .. id
      local task, why = load_task(key, NEEDS)
      if not task and not why then
        -- a deleted task's id: gone from the ready set
      elseif not task then
        -- Already out of `ready`: fail_corrupt's ZREM finds nothing.
        fail_corrupt(key, id, why, Q.ready, Q.failed, now, channel)
        corrupt_failed = corrupt_failed + 1
      elseif task.state == 'end' then
        -- ended meanwhile (a stale entry)
      elseif task.state ~= 'queued' then
        fail_corrupt(key, id, 'in the ready set but its state is "' .. task.state .. '"',
          Q.ready, Q.failed, now, channel)
        corrupt_failed = corrupt_failed + 1
      elseif task.cancel_requested then
        -- Cancellation is state: a task cancelled on its way back to the
        -- queue never starts again.
        redis.call('HSET', key, 'state', 'end', 'outcome', 'cancelled', 'ended', now, 'updated', now)
        redis.call('ZADD', Q.ended, now, id)
        events[#events + 1] = {task = id, event = 'cancelled'}
      else
        task.attempts = task.attempts + 1
        -- DESIGN rule 5: never below the server time in µs (see next_fence).
        task.fence = math.max(task.fence + 1, fence_floor)
        redis.call('HSET', key, 'state', 'running', 'worker', node, 'claim', token,
          'attempts', num_text(task.attempts), 'fence', num_text(task.fence),
          'started', now, 'updated', now)
        if task.run_at then redis.call('HDEL', key, 'run_at') end
        leases[#leases + 1] = now + lease
        leases[#leases + 1] = id
        events[#events + 1] = {task = id, event = 'started', attempt = task.attempts, node = node}
        claimed[#claimed + 1] = id
        grants[#grants + 1] = grant(id, task)
      end
    end
  end
  if #claimed > 0 then
    redis.call('ZADD', Q.running, unpack(leases))
    redis.call('SET', token_key, table.concat(claimed, ' '), 'PX', token_ttl)
    -- Work is left: make sure a blocked worker wakes for it (the marker
    -- that woke this one may have been the last).
    if redis.call('ZCARD', Q.ready) > 0 and redis.call('LLEN', Q.marker) == 0 then
      redis.call('LPUSH', Q.marker, '1')
    end
  end
  if #claimed < want then
    local first = redis.call('ZRANGE', Q.delayed, 0, 0, 'WITHSCORES')
    if first[2] then next_delayed = math.max(tonumber(first[2]) - now, 0) end
    first = redis.call('ZRANGE', Q.running, 0, 0, 'WITHSCORES')
    if first[2] then next_lease = math.max(tonumber(first[2]) - now, 0) end
  end
end

publish_events(channel, events)
return {finishes, grants, next_delayed, next_lease, token_spent, corrupt_failed}
