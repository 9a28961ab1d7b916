-- semaphore_count: live permits right now (Redis clock).
-- KEYS[1] = holders zset.  Returns the count.
return redis.call('ZCOUNT', KEYS[1], '(' .. now_ms(), '+inf')
