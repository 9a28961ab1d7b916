-- cluster_sweep: one turn of the active master, in one script:
--   1. workers whose membership lease ran out (Redis clock) are removed and
--      their jobs go back to the pending set (a bounded batch, from the
--      workers zset by deadline: O(log n + k));
--   2. pending jobs, in arrival order (a bounded batch), go to the
--      least-loaded live worker with room (capacity 0 = unlimited), each
--      with a fresh fencing token and an 'add' message to that worker;
--   3. if asked and a worker joined since the last rebalance, jobs move from
--      the most to the least loaded live worker until their loads differ by
--      at most one (moving no more than needed): 'delete' (reason
--      'rebalanced') to the old worker, 'add' with a new token to the new.
-- Only the holder of the master seat may sweep. Everything is read and
-- checked first and the plan made in memory; then it is written.
-- KEYS[1] = master seat   KEYS[2] = cluster record   KEYS[3] = pending zset
-- KEYS[4] = workers zset   KEYS[5] = fencing counter
-- ARGV[1] = master token   ARGV[2] = job key prefix   ARGV[3] = worker key prefix
-- ARGV[4] = batch size   ARGV[5] = '1' to rebalance after joins, else '0'
-- Returns {'standby'} when the seat is not ours, else
-- {'active', workers reaped, jobs assigned, jobs moved,
--  ms until the earliest live worker's deadline (-1: no worker), more}
-- where more = 1 when a batch limit was hit or reaped jobs wait (sweep again).
local now = now_ms()
want_type(KEYS[1], 'string')
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {'standby'} end
want_type(KEYS[2], 'hash')
want_type(KEYS[3], 'zset')
want_type(KEYS[4], 'zset')
want_counter(KEYS[5])
local jp, wp, batch = ARGV[2], ARGV[3], tonumber(ARGV[4])

-- Read and check.
local dead = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, batch)
for _, w in ipairs(dead) do
  want_type(wp .. w, 'hash')
  check_release(wp .. w .. ':jobs', jp)
end

local cands = {}
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '(' .. now, '+inf')) do
  want_type(wp .. w, 'hash')
  want_type(wp .. w .. ':jobs', 'hash')
  local raw = redis.call('HGET', wp .. w, 'capacity') or '0'
  local cap = tonumber(raw)
  if not cap then corrupt(wp .. w, 'capacity ' .. raw .. ' is not a number') end
  cands[#cands + 1] = {w = w, load = redis.call('HLEN', wp .. w .. ':jobs'), cap = cap}
end

-- The least-loaded candidate with room, or nil (ties: first joined order).
local function lightest()
  local best
  for _, c in ipairs(cands) do
    if (c.cap == 0 or c.load < c.cap) and (not best or c.load < best.load) then best = c end
  end
  return best
end

local pending = redis.call('ZRANGE', KEYS[3], 0, batch - 1)
local plan, drop = {}, {}
for _, id in ipairs(pending) do
  local jk = jp .. id
  want_type(jk, 'hash')
  local w = redis.call('HGET', jk, 'worker')
  if not w or w ~= '' then
    drop[#drop + 1] = id -- deleted, or assigned already: not pending
  else
    local c = lightest()
    if not c then break end
    c.load = c.load + 1
    plan[#plan + 1] = {id = id, to = c.w}
  end
end

local moves = {}
local rebalance = ARGV[5] == '1' and redis.call('HGET', KEYS[2], 'rebalance') == '1'
local rebalance_left = false
if rebalance then
  local taken = {} -- per donor: job ids already picked
  while true do
    if #moves >= batch then rebalance_left = true break end
    local donor
    for _, c in ipairs(cands) do
      if not donor or c.load > donor.load then donor = c end
    end
    local to = lightest()
    if not donor or not to or donor.load - to.load <= 1 then break end
    -- Only jobs the donor holds now (not ones planned above) can move.
    local ids = taken[donor.w]
    if not ids then
      ids = redis.call('HKEYS', wp .. donor.w .. ':jobs')
      taken[donor.w] = ids
    end
    local id = table.remove(ids)
    if not id then break end
    want_type(jp .. id, 'hash')
    donor.load = donor.load - 1
    to.load = to.load + 1
    moves[#moves + 1] = {id = id, from = donor.w, to = to.w}
  end
end

-- Write.
local reaped_jobs = 0
for _, w in ipairs(dead) do
  reaped_jobs = reaped_jobs + release(wp .. w .. ':jobs', w, jp, KEYS[3])
  redis.call('ZREM', KEYS[4], w)
  redis.call('DEL', wp .. w)
  -- In case it is alive after all (its clock or network misbehaved): it
  -- must stop now. A worker that fenced itself in time ignores this.
  redis.call('PUBLISH', wp .. w .. ':events', cjson.encode({op = 'reaped'}))
end
for _, id in ipairs(drop) do redis.call('ZREM', KEYS[3], id) end
for _, p in ipairs(plan) do
  redis.call('ZREM', KEYS[3], p.id)
  assign(p.id, jp .. p.id, p.to, wp, KEYS[5], now)
end
for _, m in ipairs(moves) do
  local old = redis.call('HGET', wp .. m.from .. ':jobs', m.id) or ''
  redis.call('HDEL', wp .. m.from .. ':jobs', m.id)
  redis.call('PUBLISH', wp .. m.from .. ':events',
    cjson.encode({op = 'delete', id = m.id, token = old, reason = 'rebalanced'}))
  assign(m.id, jp .. m.id, m.to, wp, KEYS[5], now)
end
if rebalance and not rebalance_left then redis.call('HDEL', KEYS[2], 'rebalance') end

local next_deadline = -1
local first = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if first[2] then next_deadline = math.max(tonumber(first[2]) - now, 0) end
local more = 0
if #dead >= batch or reaped_jobs > 0 or rebalance_left
  or (#pending >= batch and #plan + #drop >= #pending) then
  more = 1
end
return {'active', #dead, #plan, #moves, next_deadline, more}
