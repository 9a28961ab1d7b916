-- cluster_jobs: list jobs (read only), in arrival order.
-- KEYS[1] = jobs zset   ARGV[1] = job key prefix
-- Returns {id, payload, worker, token, added, ...} ('' worker and token when
-- pending).
want_type(KEYS[1], 'zset')
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  want_type(ARGV[1] .. id, 'hash')
  local h = redis.call('HMGET', ARGV[1] .. id, 'payload', 'worker', 'token', 'added')
  if h[1] then
    out[#out + 1] = id
    out[#out + 1] = h[1]
    out[#out + 1] = h[2] or ''
    out[#out + 1] = h[3] or ''
    out[#out + 1] = h[4] or '0'
  end
end
return out
