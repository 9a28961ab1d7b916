-- node_beat: renew this node's membership.
-- KEYS[1] = node zset {ns:nodes}      KEYS[2] = node info hash {ns:nodes}:info:<id>
-- ARGV[1] = node id   ARGV[2] = membership ttl (ms)   ARGV[3] = instance token
-- ARGV[4] = 1 on the first beat of this handle (refuse a live namesake), else 0
-- ARGV[5..] = info field/value pairs
-- Returns the new deadline (ms, server clock), or -1 when the first beat finds
-- the id held by another live instance.
local now = now_ms()
local ttl = tonumber(ARGV[2])
if ARGV[4] == '1' then
  local owner = redis.call('HGET', KEYS[2], 'instance')
  local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if owner and owner ~= ARGV[3] and deadline and tonumber(deadline) > now then
    return -1
  end
end
local deadline = now + ttl
redis.call('ZADD', KEYS[1], deadline, ARGV[1])
local fields = {'instance', ARGV[3], 'deadline', deadline}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[2], unpack(fields))
-- Keep a dead node's record for 10 ttls so monitors can report it.
redis.call('PEXPIRE', KEYS[2], ttl * 10)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl * 10)
return deadline
