-- node_list: nodes whose membership is live (alive=1) or lapsed (alive=0).
-- KEYS[1] = node zset   ARGV[1] = 1 for live nodes, 0 for dead ones
-- ARGV[2] = key prefix of info hashes ({ns:nodes}:info:)
-- Returns { now, {id, deadline, {field, value, ...}}, ... }
local now = now_ms()
local ids
if ARGV[1] == '1' then
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
else
  ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES')
end
local out = {now}
for i = 1, #ids, 2 do
  out[#out + 1] = {ids[i], ids[i + 1], redis.call('HGETALL', ARGV[2] .. ids[i])}
end
return out
