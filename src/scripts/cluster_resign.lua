-- cluster_resign: the active master steps down (stop or drop), and tells the
-- standbys so one takes over at once instead of at lease expiry.
-- KEYS[1] = master seat   ARGV[1] = our token   ARGV[2] = masters' wake channel
-- Returns 1 if we held the seat, 0 if not.
want_type(KEYS[1], 'string')
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], 'resign')
return 1
