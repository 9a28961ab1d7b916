-- lease_renew: renew a batch of leases held by this node, one call per slot.
-- A lease is renewed only while it is still live and still ours: renewal
-- never re-creates an expired or taken-over lease.
-- ARGV[1] = number of leases; then per lease: kind, ttl_ms, then by kind:
--   'key'     KEYS: key             ARGV: token   (string key holding our token)
--   'member'  KEYS: zset            ARGV: member  (zset member scored by deadline)
--   'guarded' KEYS: zset, hash      ARGV: member, field, token
--             (zset member scored by deadline, and hash[field] == token; the
--             token makes it safe to renew a lapsed deadline nobody reaped)
-- Returns one integer per lease: 1 renewed, 0 lost.
local now = now_ms()
local out = {}
local k, a = 1, 2
for i = 1, tonumber(ARGV[1]) do
  local kind, ttl = ARGV[a], tonumber(ARGV[a + 1])
  if kind == 'key' then
    if redis.call('GET', KEYS[k]) == ARGV[a + 2] then
      redis.call('PEXPIRE', KEYS[k], ttl)
      out[i] = 1
    else
      out[i] = 0
    end
    k, a = k + 1, a + 3
  elseif kind == 'member' then
    local score = redis.call('ZSCORE', KEYS[k], ARGV[a + 2])
    if score and tonumber(score) > now then
      redis.call('ZADD', KEYS[k], 'XX', now + ttl, ARGV[a + 2])
      out[i] = 1
    else
      out[i] = 0
    end
    k, a = k + 1, a + 3
  elseif kind == 'guarded' then
    -- Still in the zset and still our token: nobody reaped or re-claimed it,
    -- so renewing is safe even if the deadline passed during an outage.
    if redis.call('ZSCORE', KEYS[k], ARGV[a + 2]) and redis.call('HGET', KEYS[k + 1], ARGV[a + 3]) == ARGV[a + 4] then
      redis.call('ZADD', KEYS[k], 'XX', now + ttl, ARGV[a + 2])
      out[i] = 1
    else
      out[i] = 0
    end
    k, a = k + 2, a + 5
  else
    return redis.error_reply('lease_renew: unknown lease kind ' .. tostring(kind))
  end
end
return out
