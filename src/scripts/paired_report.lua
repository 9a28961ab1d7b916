-- paired_report: the holder of a paired task reports success or failure.
-- Success finishes the task; failure opens it for a backup (or, when the
-- attempts are used up, ends it as failed). Either way the owner token and
-- lease are removed and the waiting backups are woken on the channel. A
-- report whose token or fence is no longer current is refused (a backup
-- took over); a retried report of the same token returns the first answer.
-- KEYS[1] = record hash   KEYS[2] = fencing counter
-- KEYS[3] = owner (string key, mode 'key'; hash, mode 'field')
-- KEYS[4] = lease zset (mode 'field' only)
-- ARGV[1] = mode 'key' | 'field'   ARGV[2] = field   ARGV[3] = our token
-- ARGV[4] = our fence   ARGV[5] = 'ok' | 'fail'   ARGV[6] = reason (fail)
-- ARGV[7] = retention ms of a finished record   ARGV[8] = events channel
-- Returns {'done'} | {'open'} | {'failed'}: the task's state after the report
--         {'stale', current attempt, current fence, state}: refused
--         {'corrupt', key, what is wrong}  (nothing was written)
-- Publishes the new state ('done', 'open', 'failed') on the channel.
local mode, field, token = ARGV[1], ARGV[2], ARGV[3]
local REC, FENCE, OWNER, LEASES = KEYS[1], KEYS[2], KEYS[3], KEYS[4]

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
  return redis.error_reply('paired_report: unknown mode ' .. tostring(mode))
end
for _, c in ipairs(checks) do
  local why = wrong_type(c[1], c[2])
  if why then return {'corrupt', c[1], why} end
end
if ARGV[5] ~= 'ok' and ARGV[5] ~= 'fail' then
  return redis.error_reply('paired_report: unknown outcome ' .. tostring(ARGV[5]))
end
local rec = {}
local flat = redis.call('HGETALL', REC)
for i = 1, #flat, 2 do rec[flat[i]] = flat[i + 1] end
if #flat == 0 then return {'stale', 0, '0', 'gone'} end
local attempt, max = tonumber(rec.attempt), tonumber(rec.max)
if not attempt or not max then
  return {'corrupt', REC, 'attempt or max missing or not a number'}
end
if rec.reported == token then
  -- A retry of a report that was applied: the same answer.
  local s = rec.state
  if s == 'running' then s = 'open' end -- ours was applied; a backup has it now
  return {s}
end
if rec.state ~= 'running' or rec.owner ~= token or rec.fence ~= ARGV[4] then
  return {'stale', attempt, rec.fence or '0', rec.state or ''}
end
local current
if mode == 'key' then
  current = redis.call('GET', OWNER)
else
  current = redis.call('HGET', OWNER, field)
end
if current and current ~= token then
  return {'stale', attempt, rec.fence, 'held by another owner'}
end

local now = now_ms()
local retention = tonumber(ARGV[7])
if mode == 'key' then
  redis.call('DEL', OWNER)
else
  redis.call('HDEL', OWNER, field)
  redis.call('ZREM', LEASES, field)
end
local state
if ARGV[5] == 'ok' then
  state = 'done'
elseif attempt >= max then
  state = 'failed'
else
  state = 'open'
end
redis.call('HSET', REC, 'state', state, 'owner', '', 'reported', token)
if ARGV[5] == 'fail' then redis.call('HSET', REC, 'reason', ARGV[6]) end
if state ~= 'open' then
  redis.call('HSET', REC, 'finished', now)
  redis.call('PEXPIRE', REC, retention)
  redis.call('PEXPIRE', FENCE, retention)
end
redis.call('PUBLISH', ARGV[8], state)
return {state}
