-- redswarm prelude, prepended to every script.
-- The server's clock in milliseconds (DESIGN rule 2: Redis's clock, not the host's).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The server's clock in microseconds (exact in a Lua double until ~2255).
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- DESIGN rule 11: Redis does not roll back a script that fails midway, so a
-- script reads and checks everything it needs before its first write, and
-- aborts with corrupt() when something is unusable. The error reply
-- 'CORRUPT <key>\t<reason>' becomes Error::CorruptData naming the key.
local function corrupt(key, why)
  error({err = 'CORRUPT ' .. key .. '\t' .. why})
end

-- Checks that `key` is absent or of Redis type `want` ('string', 'zset', ...).
local function want_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    corrupt(key, 'is a ' .. t .. ', expected a ' .. want)
  end
end

-- Runs a read on `key` in one call, its WRONGTYPE error standing in for a
-- TYPE check (want_type's error then); any other error (an ACL denial,
-- OOM) is raised as it is.
local function read_typed(key, want, ...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r['err'] then
    if string.find(r['err'], 'WRONGTYPE', 1, true) then want_type(key, want) end
    error(r)
  end
  return r
end

-- A whole number >= 0 stored as text; nil for anything else.
local function count_of(v)
  if type(v) ~= 'string' or not string.match(v, '^%d+$') or #v > 16 then return nil end
  return tonumber(v)
end

-- Numbers as Redis should store them: integral text, never '1.7e+15'.
local function num_text(n)
  return string.format('%.0f', n)
end

-- Fencing counters (DESIGN rule 5). A counter is a string key, or with
-- `field` a field of a hash. fence_current() reads and checks it (0 when
-- absent) and writes nothing: call it before the script's first write.
-- next_fence() stores and returns the next token, max(current + 1, now_us):
-- never below the Redis server time in microseconds, so tokens keep rising
-- across a Redis restart that lost the counter (no persistence), and stay
-- strictly increasing when it did not. What remains: a Redis host clock
-- stepped backwards across such a restart, or more than one grant per
-- microsecond sustained until the restart.
local function fence_current(key, field)
  local v
  if field then
    want_type(key, 'hash')
    v = redis.call('HGET', key, field)
  else
    v = read_typed(key, 'string', 'GET', key)
  end
  if not v then return 0 end
  local n = count_of(v)
  if not n then
    corrupt(key, 'fencing counter is not a whole number: "' .. string.sub(v, 1, 40) .. '"')
  end
  return n
end

local function next_fence(key, current, field)
  local fence = math.max(current + 1, now_us())
  if field then
    redis.call('HSET', key, field, num_text(fence))
  else
    redis.call('SET', key, num_text(fence))
  end
  return fence
end

-- Fair (FIFO) waiter queues of locks and semaphores: a zset of waiter ids by
-- arrival number plus a hash of ticket deadlines (and the arrival counter
-- under '#seq'). A waiter that stops refreshing its ticket loses its place.
--
-- fair_check() checks both keys and returns the waiters at the head whose
-- tickets lapsed, without writing; fair_drop() then removes them.
local function fair_check(queue, tickets, now)
  want_type(queue, 'zset')
  want_type(tickets, 'hash')
  local seq = redis.call('HGET', tickets, '#seq')
  if seq and not count_of(seq) then
    corrupt(tickets, 'arrival counter `#seq` is not a whole number: "' .. string.sub(seq, 1, 40) .. '"')
  end
  local gone = {}
  while true do
    local head = redis.call('ZRANGE', queue, #gone, #gone)[1]
    if not head then return gone end
    local dl = redis.call('HGET', tickets, head)
    if dl then
      local deadline = count_of(dl)
      if not deadline then
        corrupt(tickets, 'ticket deadline of waiter `' .. head .. '` is not a whole number: "' .. string.sub(dl, 1, 40) .. '"')
      end
      if deadline > now then return gone end
    end
    gone[#gone + 1] = head
  end
end

local function fair_drop(queue, tickets, gone)
  for _, id in ipairs(gone) do
    redis.call('ZREM', queue, id)
    redis.call('HDEL', tickets, id)
  end
end

local function fair_enqueue(queue, tickets, id, now, ticket_ttl)
  if not redis.call('ZSCORE', queue, id) then
    redis.call('ZADD', queue, redis.call('HINCRBY', tickets, '#seq', 1), id)
  end
  redis.call('HSET', tickets, id, num_text(now + ticket_ttl))
end

local function fair_leave(queue, tickets, id)
  redis.call('ZREM', queue, id)
  redis.call('HDEL', tickets, id)
  if redis.call('ZCARD', queue) == 0 then redis.call('DEL', tickets) end
end
