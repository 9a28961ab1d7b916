-- queue_reap: tasks whose lease ran out (their worker died, hung or was
-- cut off) go back to the queue. Works from the running zset by deadline,
-- a bounded batch per call (O(log n + k)). Atomic, so two reapers never
-- re-queue one task twice.
--
-- A run lost with its worker is not the task's failure: it counts against
-- max_lost (field `lost`), not max_attempts, so outages do not use up a
-- task's attempts. Only a task that loses max_lost runs (a poison task that
-- kills every worker it touches) ends failed, with failed_by = 'lost'.
-- A task whose cancellation was requested ends 'cancelled'; an unusable
-- record ends failed with failed_by = 'corrupt'.
--
-- KEYS[1] = running zset   KEYS[2] = delayed zset   KEYS[3] = failed zset
-- KEYS[4] = wake-up marker list   KEYS[5] = ended zset
-- ARGV[1] = task key prefix   ARGV[2] = batch size   ARGV[3] = queue events channel
-- Returns {requeued, failed}.
local running, delayed, failed, marker, ended = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, channel = ARGV[1], ARGV[3]
want_type(running, 'zset')
want_type(delayed, 'zset')
want_type(failed, 'zset')
want_type(marker, 'list')
want_type(ended, 'zset')
local now = now_ms()
local ids = redis.call('ZRANGEBYSCORE', running, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local requeued, nfailed = 0, 0
for _, id in ipairs(ids) do
  local key = prefix .. id
  local task, why = load_task(key, {'attempts', 'lost', 'max_lost'})
  if not task and not why then
    redis.call('ZREM', running, id) -- deleted meanwhile
  elseif not task then
    fail_corrupt(key, id, why, running, failed, now, channel)
    nfailed = nfailed + 1
  elseif task.state ~= 'running' then
    redis.call('ZREM', running, id) -- a stale entry: the task moved on
  else
    redis.call('ZREM', running, id)
    local lost = task.lost + 1
    local ev
    redis.call('HSET', key, 'lost', num_text(lost))
    if task.cancel_requested then
      redis.call('HSET', key, 'state', 'end', 'outcome', 'cancelled', 'ended', now, 'updated', now)
      redis.call('HDEL', key, 'claim')
      redis.call('ZADD', ended, now, id)
      ev = {task = id, event = 'cancelled'}
    elseif lost >= task.max_lost then
      local reason = 'run lost with its worker ' .. lost .. ' times (max_lost_runs ' .. task.max_lost ..
        '): the lease of attempt ' .. task.attempts .. ' on worker ' .. (task.worker or '?') .. ' expired'
      redis.call('HSET', key, 'state', 'end', 'outcome', 'failed', 'failed_by', 'lost',
        'ended', now, 'updated', now, 'error', reason)
      redis.call('HDEL', key, 'claim')
      redis.call('ZADD', failed, now, id)
      nfailed = nfailed + 1
      ev = {task = id, event = 'failed', error = reason}
    else
      requeue_now(key, id, delayed, marker, now)
      requeued = requeued + 1
      ev = {task = id, event = 'requeued'}
    end
    publish_event(channel, key, ev)
  end
end
return {requeued, nfailed}
