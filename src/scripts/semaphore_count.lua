-- semaphore_count: live permits right now (Redis clock).
-- KEYS[1] = holders zset.  Returns the count.
-- Errors 'CORRUPT <key>\t<reason>' when the holders key is not a zset.
want_type(KEYS[1], 'zset')
return redis.call('ZCOUNT', KEYS[1], '(' .. num_text(now_ms()), '+inf')
