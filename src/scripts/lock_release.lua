-- lock_release: release a lock we hold and wake waiters.
-- KEYS[1] = owner key   KEYS[2] = waiter queue zset   KEYS[3] = waiter tickets hash
-- ARGV[1] = token   ARGV[2] = release channel
-- Publishes on the channel the token of the queue's head waiter (fair
-- mode, so only it retries) or '' (everyone may retry).
-- Returns 1 released, 0 not held by anyone (expired or already released),
--         -1 held by someone else (we lost it; nothing changed).
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('DEL', KEYS[1])
  -- Wake a live waiter: drop heads whose tickets lapsed first.
  fair_prune(KEYS[2], KEYS[3], now_ms())
  local head = redis.call('ZRANGE', KEYS[2], 0, 0)[1] or ''
  redis.call('PUBLISH', ARGV[2], head)
  return 1
elseif not cur then
  return 0
end
return -1
