-- node_leave: deregister this node at shutdown (others need not wait for expiry).
-- KEYS[1] = node zset   KEYS[2] = node info hash   ARGV[1] = node id   ARGV[2] = instance token
-- Returns 1 if removed, 0 if the id belongs to another instance.
local owner = redis.call('HGET', KEYS[2], 'instance')
if owner and owner ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
return 1
