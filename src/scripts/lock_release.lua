-- lock_release: release a lock we hold and wake waiters.
-- KEYS[1] = owner key   KEYS[2] = waiter queue zset   KEYS[3] = waiter tickets hash
-- ARGV[1] = token   ARGV[2] = release channel
-- Publishes on the channel the token of the queue's head waiter (fair
-- mode, so only it retries) or '' (everyone may retry).
-- Returns 1 released, 0 not held by anyone (expired or already released),
--         -1 held by someone else (we lost it; nothing changed).
-- Errors 'CORRUPT <key>\t<reason>' (before any write) on unusable data.
local cur = read_typed(KEYS[1], 'string', 'GET', KEYS[1])
if cur ~= ARGV[1] then
  if cur then return -1 end
  return 0
end
-- Wake a live waiter: heads whose tickets lapsed are dropped first.
-- Without fair waiters (both keys absent) there is nothing to check.
local gone, fair = {}, redis.call('EXISTS', KEYS[2], KEYS[3]) > 0
if fair then
  gone = fair_check(KEYS[2], KEYS[3], now_ms())
end
redis.call('DEL', KEYS[1])
fair_drop(KEYS[2], KEYS[3], gone)
local head = fair and redis.call('ZRANGE', KEYS[2], 0, 0)[1] or ''
redis.call('PUBLISH', ARGV[2], head)
return 1
