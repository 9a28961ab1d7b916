-- redswarm prelude, prepended to every script.
-- The server's clock in milliseconds (DESIGN rule 2: Redis's clock, not the host's).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Fair (FIFO) waiter queues of locks and semaphores: a zset of waiter ids by
-- arrival number plus a hash of ticket deadlines (and the arrival counter
-- under '#seq'). A waiter that stops refreshing its ticket loses its place.
local function fair_prune(queue, tickets, now)
  while true do
    local head = redis.call('ZRANGE', queue, 0, 0)[1]
    if not head then return end
    local dl = redis.call('HGET', tickets, head)
    if dl and tonumber(dl) > now then return end
    redis.call('ZREM', queue, head)
    redis.call('HDEL', tickets, head)
  end
end

local function fair_enqueue(queue, tickets, id, now, ticket_ttl)
  if not redis.call('ZSCORE', queue, id) then
    redis.call('ZADD', queue, redis.call('HINCRBY', tickets, '#seq', 1), id)
  end
  redis.call('HSET', tickets, id, now + ticket_ttl)
end

local function fair_leave(queue, tickets, id)
  redis.call('ZREM', queue, id)
  redis.call('HDEL', tickets, id)
  if redis.call('ZCARD', queue) == 0 then redis.call('DEL', tickets) end
end
