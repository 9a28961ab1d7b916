-- cluster prelude: helpers of the job-cluster scripts (src/cluster/), put
-- after the shared prelude. All keys of one cluster share the hash tag
-- {ns:cluster:<c>}; per-job and per-worker keys are built from the prefixes
-- the caller passes ('<base>:job:', '<base>:worker:'), so they stay on the
-- cluster's slot.
--
-- DESIGN rule 11: every script checks what it reads with these helpers
-- before its first write. They raise 'CORRUPT <what> :: <key>', which the
-- Rust side turns into Error::CorruptData naming the key; nothing has been
-- written when they raise.

local function corrupt(key, what)
  error({err = 'CORRUPT ' .. what .. ' :: ' .. key})
end

-- key is absent or of type want.
local function want_type(key, want)
  local t = redis.call('TYPE', key)['ok']
  if t ~= 'none' and t ~= want then
    corrupt(key, 'holds a ' .. t .. ', expected a ' .. want)
  end
end

-- key is absent (0) or a string holding a non-negative number; returns it.
local function want_counter(key)
  want_type(key, 'string')
  local v = redis.call('GET', key)
  if not v then return 0 end
  local n = tonumber(v)
  if not n or n < 0 then corrupt(key, 'holds ' .. v .. ', expected a counter') end
  return n
end

-- An integer as a decimal string (tokens are above 2^31; tostring would
-- print them in exponent form).
local function fmt(n)
  return string.format('%.0f', n)
end

-- The next fencing token of a counter key: max(counter + 1, now in us), so
-- tokens keep increasing across a Redis restart that lost the counter.
-- (Same name and semantics as the shared prelude's helper.)
local function next_fence(key)
  local t = redis.call('TIME')
  local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local n = math.max((tonumber(redis.call('GET', key)) or 0) + 1, now_us)
  redis.call('SET', key, fmt(n))
  return n
end

-- Checks what release() below will touch.
local function check_release(worker_jobs, job_prefix)
  want_type(worker_jobs, 'hash')
  for _, id in ipairs(redis.call('HKEYS', worker_jobs)) do
    want_type(job_prefix .. id, 'hash')
  end
end

-- Puts every job of worker w back in the pending set, in arrival order,
-- and forgets the worker's job list. Returns how many went back.
local function release(worker_jobs, w, job_prefix, pending)
  local n = 0
  for _, id in ipairs(redis.call('HKEYS', worker_jobs)) do
    local jk = job_prefix .. id
    local h = redis.call('HMGET', jk, 'worker', 'seq')
    if h[1] == w then
      redis.call('HSET', jk, 'worker', '', 'token', '')
      redis.call('ZADD', pending, tonumber(h[2]) or 0, id)
      n = n + 1
    end
  end
  redis.call('DEL', worker_jobs)
  return n
end

-- Assigns job id (hash jk) to worker w with a fresh fencing token and tells
-- the worker; the message carries the payload so the worker needs no read.
local function assign(id, jk, w, worker_prefix, fence, now)
  local token = fmt(next_fence(fence))
  redis.call('HSET', jk, 'worker', w, 'token', token, 'assigned', now)
  redis.call('HSET', worker_prefix .. w .. ':jobs', id, token)
  local payload = redis.call('HGET', jk, 'payload') or 'null'
  redis.call('PUBLISH', worker_prefix .. w .. ':events',
    cjson.encode({op = 'add', id = id, token = token, payload = payload}))
end
