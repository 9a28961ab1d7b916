-- cluster_open: record that a cluster exists (a master was created for it).
-- KEYS[1] = cluster record {..}:meta
-- Returns 1 when created now, 0 when it existed.
want_type(KEYS[1], 'hash')
return redis.call('HSETNX', KEYS[1], 'created', now_ms())
