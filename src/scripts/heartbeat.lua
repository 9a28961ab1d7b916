-- heartbeat: one beat of this node, in one call (DESIGN rule 10: one reply,
-- so one read timeout bounds it): renew the node's membership, renew every
-- lease the node holds, and optionally list the live peers.
-- KEYS[1] = node zset {ns:nodes}   KEYS[2] = node info hash {ns:nodes}:info:<id>
-- KEYS[3..] = the leases' keys, in the order of their ARGV entries
-- ARGV[1] = node id   ARGV[2] = membership ttl (ms)   ARGV[3] = instance token
-- ARGV[4] = 1 on the first beat of this handle (refuse a live namesake), else 0
-- ARGV[5] = 1 to list live peers, else 0   ARGV[6] = info hash key prefix
-- ARGV[7] = number of info field/value pairs (n), ARGV[8 .. 7+2n] = the pairs
-- then ARGV[8+2n] = number of leases, then per lease: kind, ttl_ms, then by kind:
--   'key'     KEYS: key         ARGV: token   (string key holding our token)
--   'member'  KEYS: zset        ARGV: member  (zset member scored by deadline)
--   'guarded' KEYS: zset, hash  ARGV: member, field, token
--             (zset member scored by deadline, and hash[field] == token; the
--             token makes it safe to renew a lapsed deadline nobody reaped)
-- Lease-only mode (Redis Cluster: one call per slot): ARGV[1] = '' — no
-- membership, no peers, ARGV[7] = 0, and the leases' keys start at KEYS[1].
-- Returns { membership, peers, flags }:
--   membership: the new deadline (ms, server clock); -1 when the first beat
--     finds the id held by another live instance; or the string
--     'corrupt:<key>' when a membership key holds the wrong type.
--   peers: {{id, deadline, {field, value, ...}}, ...} when asked, else 0.
--   flags: one per lease: 1 renewed, 0 lost (expired or not ours),
--     or the string 'corrupt:<key>' when its key holds the wrong type.
-- Each lease is checked with redis.pcall before anything is written for it,
-- so one corrupt key loses that lease only (DESIGN rule 11), never the beat.
local now = now_ms()
local pairs_n = tonumber(ARGV[7])
local lease_n = tonumber(ARGV[8 + 2 * pairs_n])

-- Check the lease list's shape before the first write.
do
  local a = 9 + 2 * pairs_n
  for _ = 1, lease_n do
    local kind = ARGV[a]
    if kind == 'key' or kind == 'member' then a = a + 3
    elseif kind == 'guarded' then a = a + 5
    else return redis.error_reply('heartbeat: unknown lease kind ' .. tostring(kind)) end
  end
end

local function kind_ok(key, want)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == want
end

-- Membership.
local membership
local ttl = tonumber(ARGV[2])
local leases_only = ARGV[1] == ''
if leases_only then
  membership = 0
elseif not kind_ok(KEYS[1], 'zset') then
  membership = 'corrupt:' .. KEYS[1]
elseif not kind_ok(KEYS[2], 'hash') then
  membership = 'corrupt:' .. KEYS[2]
else
  local owner = redis.call('HGET', KEYS[2], 'instance')
  local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
  if ARGV[4] == '1' and owner and owner ~= ARGV[3] and current and tonumber(current) > now then
    membership = -1
  else
    local deadline = now + ttl
    redis.call('ZADD', KEYS[1], deadline, ARGV[1])
    local fields = {'instance', ARGV[3], 'deadline', deadline}
    for i = 8, 7 + 2 * pairs_n do fields[#fields + 1] = ARGV[i] end
    redis.call('HSET', KEYS[2], unpack(fields))
    -- Keep a dead node's record for 10 ttls so monitors can report it.
    redis.call('PEXPIRE', KEYS[2], ttl * 10)
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl * 10)
    membership = deadline
  end
end

-- Live peers (every few beats), so a node that loses Redis knows whom to ask.
local peers = 0
if ARGV[5] == '1' and not leases_only and type(membership) == 'number' then
  peers = {}
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES')
  for i = 1, #ids, 2 do
    local info = redis.pcall('HGETALL', ARGV[6] .. ids[i])
    if type(info) ~= 'table' or info['err'] then info = {} end
    peers[#peers + 1] = {ids[i], ids[i + 1], info}
  end
end

-- Leases.
local function get(cmd, key, ...)
  local r = redis.pcall(cmd, key, ...)
  if type(r) == 'table' and r['err'] then return nil, 'corrupt:' .. key end
  return r
end

local flags = {}
local k, a = leases_only and 1 or 3, 9 + 2 * pairs_n
for i = 1, lease_n do
  local kind, lease_ttl = ARGV[a], tonumber(ARGV[a + 1])
  if kind == 'key' then
    local v, bad = get('GET', KEYS[k])
    if bad then
      flags[i] = bad
    elseif v == ARGV[a + 2] then
      redis.call('PEXPIRE', KEYS[k], lease_ttl)
      flags[i] = 1
    else
      flags[i] = 0
    end
    k, a = k + 1, a + 3
  elseif kind == 'member' then
    local score, bad = get('ZSCORE', KEYS[k], ARGV[a + 2])
    if bad then
      flags[i] = bad
    elseif score and tonumber(score) > now then
      redis.call('ZADD', KEYS[k], 'XX', now + lease_ttl, ARGV[a + 2])
      flags[i] = 1
    else
      flags[i] = 0
    end
    k, a = k + 1, a + 3
  elseif kind == 'guarded' then
    -- Still in the zset and still our token: nobody reaped or re-claimed it,
    -- so renewing is safe even if the deadline passed during an outage.
    local score, bad = get('ZSCORE', KEYS[k], ARGV[a + 2])
    local owner, bad2
    if not bad then owner, bad2 = get('HGET', KEYS[k + 1], ARGV[a + 3]) end
    if bad or bad2 then
      flags[i] = bad or bad2
    elseif score and owner == ARGV[a + 4] then
      redis.call('ZADD', KEYS[k], 'XX', now + lease_ttl, ARGV[a + 2])
      flags[i] = 1
    else
      flags[i] = 0
    end
    k, a = k + 2, a + 5
  end
end

return {membership, peers, flags}
