-- paired_join: a participant joins a paired task. It wins it (first attempt),
-- takes it over (the last attempt reported failure, or its holder's lease
-- lapsed: the worker died or was cut off), learns that it is finished, or
-- learns how long the holder's lease has left. A retry by the holder's own
-- token (after a lost reply) returns the same grant, lease refreshed.
-- KEYS[1] = record hash   KEYS[2] = fencing counter (string)
-- KEYS[3] = owner: a string key holding the holder's token with a PX lease
--           (mode 'key'), or a hash whose field ARGV[2] holds it (mode 'field')
-- KEYS[4] = lease zset, field -> deadline ms (mode 'field' only)
-- ARGV[1] = mode 'key' | 'field'   ARGV[2] = field ('' in mode 'key')
-- ARGV[3] = our token   ARGV[4] = lease ms   ARGV[5] = max attempts (used
-- when the record is created)   ARGV[6] = payload (JSON)   ARGV[7] = our node
-- ARGV[8] = retention ms of a finished record   ARGV[9] = events channel
-- Returns {'won'|'took', attempt, fence, payload}  ('won' = attempt 1)
--         {'wait', holder's remaining lease ms (-1 unknown), attempt, holder node}
--         {'done', attempt}   {'failed', attempts, reason}
--         {'corrupt', key, what is wrong}  (nothing was written)
-- Publishes 'failed' on the channel when a lapsed last attempt ends the task.
local mode, field, token = ARGV[1], ARGV[2], ARGV[3]
local lease, max_attempts = tonumber(ARGV[4]), tonumber(ARGV[5])
local REC, FENCE, OWNER, LEASES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

-- Fencing token: max(counter + 1, Redis time in us), so it keeps growing
-- even when the counter was lost (a restart without persistence, or the
-- finished record's expiry). Callers validate the counter first.
local function next_fence(key)
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local cur = tonumber(redis.call('GET', key) or '0') or 0
  local n = math.max(cur + 1, now_us)
  redis.call('SET', key, string.format('%d', n))
  return n
end

-- Validate everything before the first write (DESIGN rule 11).
local function wrong_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then return 'holds a ' .. t .. ', expected a ' .. want end
end
local checks = {{REC, 'hash'}, {FENCE, 'string'}}
if mode == 'key' then
  checks[#checks + 1] = {OWNER, 'string'}
elseif mode == 'field' then
  checks[#checks + 1] = {OWNER, 'hash'}
  checks[#checks + 1] = {LEASES, 'zset'}
else
  return redis.error_reply('paired_join: unknown mode ' .. tostring(mode))
end
for _, c in ipairs(checks) do
  local why = wrong_type(c[1], c[2])
  if why then return {'corrupt', c[1], why} end
end
local fence_now = redis.call('GET', FENCE)
if fence_now and not tonumber(fence_now) then
  return {'corrupt', FENCE, 'fencing counter is not a number'}
end
local rec = {}
local flat = redis.call('HGETALL', REC)
for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
local exists = #flat > 0
local attempt, max = tonumber(rec.attempt), tonumber(rec.max)
if exists then
  local states = {running = true, open = true, done = true, failed = true}
  if not states[rec.state or ''] then
    return {'corrupt', REC, 'unknown state ' .. tostring(rec.state)}
  end
  if not attempt or attempt < 1 or not max or max < 1 or not tonumber(rec.fence or '')
    or not rec.payload then
    return {'corrupt', REC, 'attempt, max, fence or payload missing or not a number'}
  end
end

local now = now_ms()
-- The live holder's token and remaining lease (ms), or nil if none.
local function holder()
  if mode == 'key' then
    local t = redis.call('GET', OWNER)
    if t then return t, redis.call('PTTL', OWNER) end
  else
    local t = redis.call('HGET', OWNER, field)
    local d = tonumber(redis.call('ZSCORE', LEASES, field))
    if t and d and d > now then return t, d - now end
  end
  return nil
end
local function hold()
  if mode == 'key' then
    redis.call('SET', OWNER, token, 'PX', lease)
  else
    redis.call('HSET', OWNER, field, token)
    redis.call('ZADD', LEASES, now + lease, field)
  end
end
local function unhold()
  if mode == 'key' then
    redis.call('DEL', OWNER)
  else
    redis.call('HDEL', OWNER, field)
    redis.call('ZREM', LEASES, field)
  end
end

if not exists then
  local f = string.format('%d', next_fence(FENCE))
  redis.call('HSET', REC, 'state', 'running', 'attempt', 1, 'max', max_attempts,
    'fence', f, 'owner', token, 'node', ARGV[7], 'payload', ARGV[6], 'created', now)
  hold()
  return {'won', 1, f, ARGV[6]}
end
if rec.state == 'done' then return {'done', attempt} end
if rec.state == 'failed' then return {'failed', attempt, rec.reason or ''} end
if rec.state == 'running' and rec.owner == token then
  -- Our own grant, asked again after a lost reply: same attempt and fence.
  hold()
  return {attempt == 1 and 'won' or 'took', attempt, rec.fence, rec.payload}
end
local reason = rec.reason or ''
if rec.state == 'running' then
  local t, left = holder()
  if t then return {'wait', left, attempt, rec.node or ''} end
  -- The holder's lease lapsed: that attempt failed.
  reason = 'attempt ' .. attempt .. ' lost its lease (worker died or was cut off)'
end
if attempt >= max then
  redis.call('HSET', REC, 'state', 'failed', 'reason', reason, 'owner', '', 'finished', now)
  unhold()
  redis.call('PEXPIRE', REC, tonumber(ARGV[8]))
  if fence_now then redis.call('PEXPIRE', FENCE, tonumber(ARGV[8])) end
  redis.call('PUBLISH', ARGV[9], 'failed')
  return {'failed', attempt, reason}
end
-- 'open' (the last attempt reported failure) or a lapsed lease: take over.
local f = string.format('%d', next_fence(FENCE))
attempt = attempt + 1
redis.call('HSET', REC, 'state', 'running', 'attempt', attempt, 'fence', f,
  'owner', token, 'node', ARGV[7], 'reason', reason)
hold()
return {'took', attempt, f, rec.payload}
