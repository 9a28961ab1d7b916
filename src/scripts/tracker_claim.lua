-- Hands the oldest released task to consumer ARGV[2] in one step: off the
-- released list, attempt counted, a new fencing token, and its processing
-- deadline in the processing zset (so a consumer that dies loses nothing:
-- the sweep releases the task again at that deadline).
-- KEYS: 1 released list, 2 processing zset
-- ARGV: 1 task record prefix, 2 consumer id, 3 sweep channel
-- Reply: {'empty'} | {'claimed', task, info, attempt, attempts, fence, timeout ms}
want_type(KEYS[1], 'list')
want_type(KEYS[2], 'zset')
-- Entries whose record is gone or no longer released (stale) are dropped;
-- bounded so one call stays short.
for _ = 1, 100 do
  local task = redis.call('LINDEX', KEYS[1], 0)
  if not task then return {'empty'} end
  local tkey = ARGV[1] .. task
  local t = task_read(tkey, true)
  if t and t.state == 'released' then
    local current = fence_current(tkey, 'fence')
    local now = now_ms()
    local attempt = (count_of(t.attempt) or 0) + 1
    local timeout = count_of(t.timeout) or 30000
    redis.call('LPOP', KEYS[1])
    local fence = next_fence(tkey, current, 'fence')
    redis.call('HSET', tkey, 'state', 'processing', 'attempt', attempt,
      'started', num_text(now), 'consumer', ARGV[2])
    add_deadline(KEYS[2], task, now + timeout, ARGV[3])
    return {'claimed', task, t.info or '', attempt, count_of(t.attempts) or 1, num_text(fence), timeout}
  end
  redis.call('LPOP', KEYS[1])
end
return {'empty'}
