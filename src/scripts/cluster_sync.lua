-- cluster_sync: a worker's periodic reconcile (read only): what Redis says
-- it holds, against what it believes it holds. Pub/sub is lossy; this
-- bounds how long a lost message can leave the worker out of step.
-- KEYS[1] = workers zset   KEYS[2] = worker hash   KEYS[3] = worker's jobs hash
-- KEYS[4] = fencing counter
-- ARGV[1] = worker id   ARGV[2] = session token   ARGV[3] = job key prefix
-- ARGV[4..] = pairs of job id, token the worker believes it holds
-- Returns {'gone'} when the session is not a member any more, else
-- {'ok', fence floor, {id, token, payload, ...} assigned jobs the worker does
--  not hold under that token, {id, reason, ...} held jobs it lost}
-- with reason 'deleted' (the job is gone) or 'rebalanced' (it moved on).
want_type(KEYS[1], 'zset')
want_type(KEYS[2], 'hash')
want_type(KEYS[3], 'hash')
local floor = want_counter(KEYS[4])
if redis.call('HGET', KEYS[2], 'session') ~= ARGV[2]
  or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return {'gone'}
end
local held = {}
for i = 4, #ARGV - 1, 2 do held[ARGV[i]] = ARGV[i + 1] end
local new = {}
local flat = redis.call('HGETALL', KEYS[3])
for i = 1, #flat, 2 do
  local id, token = flat[i], flat[i + 1]
  if held[id] ~= token then
    want_type(ARGV[3] .. id, 'hash')
    local payload = redis.call('HGET', ARGV[3] .. id, 'payload')
    if payload then
      new[#new + 1] = id
      new[#new + 1] = token
      new[#new + 1] = payload
    end
  end
  held[id] = nil
end
local lost = {}
for id, _ in pairs(held) do
  lost[#lost + 1] = id
  if redis.call('EXISTS', ARGV[3] .. id) == 1 then
    lost[#lost + 1] = 'rebalanced'
  else
    lost[#lost + 1] = 'deleted'
  end
end
return {'ok', fmt(floor), new, lost}
