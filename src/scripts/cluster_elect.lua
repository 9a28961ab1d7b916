-- cluster_elect: become (or stay) the active master if the seat is free or
-- already ours; otherwise learn how long the current one's lease has left.
-- KEYS[1] = master seat (string: token, PX lease)
-- ARGV[1] = our token   ARGV[2] = lease ms
-- Returns {'active'} or {'standby', remaining lease ms of the active one}.
want_type(KEYS[1], 'string')
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'active'}
elseif cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'active'}
end
return {'standby', redis.call('PTTL', KEYS[1])}
