-- lock_extend: push a held lock's expiry to now + ttl. Never re-creates an
-- expired lock and never touches someone else's.
-- KEYS[1] = owner key   ARGV[1] = token   ARGV[2] = ttl ms
-- Returns 1 extended, 0 not held by anyone, -1 held by someone else.
-- Errors 'CORRUPT <key>\t<reason>' (nothing written) on unusable data.
want_type(KEYS[1], 'string')
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
  return 1
elseif not cur then
  return 0
end
return -1
