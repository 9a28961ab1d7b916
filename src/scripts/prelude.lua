-- redswarm prelude, prepended to every script.
-- The server's clock in milliseconds (DESIGN rule 2: Redis's clock, not the host's).
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
