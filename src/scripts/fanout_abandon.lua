-- fanout_abandon: a leader gives up without an outcome; a waiter is
-- promoted at once instead of after the lease.
-- KEYS[1] = leader key   ARGV[1] = leader token   ARGV[2] = done channel
-- Publishes '' (meaning "re-check") on the channel. Returns 1 if we led.
-- Errors 'CORRUPT <key>\t<reason>' (nothing written) on unusable data.
want_type(KEYS[1], 'string')
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], '')
  return 1
end
return 0
