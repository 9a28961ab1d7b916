-- cluster_workers: list live workers (read only), by lease deadline.
-- KEYS[1] = workers zset   ARGV[1] = worker key prefix
-- Returns {id, deadline ms, node, capacity, joined ms, jobs held, ...}.
want_type(KEYS[1], 'zset')
local out = {}
local now = now_ms()
local ws = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
for i = 1, #ws, 2 do
  local w = ws[i]
  want_type(ARGV[1] .. w, 'hash')
  want_type(ARGV[1] .. w .. ':jobs', 'hash')
  local h = redis.call('HMGET', ARGV[1] .. w, 'node', 'capacity', 'joined')
  out[#out + 1] = w
  out[#out + 1] = ws[i + 1]
  out[#out + 1] = h[1] or ''
  out[#out + 1] = h[2] or '0'
  out[#out + 1] = h[3] or '0'
  out[#out + 1] = redis.call('HLEN', ARGV[1] .. w .. ':jobs')
end
return out
