-- queue_delete: remove a task from every set and delete its record. A
-- running task's worker will find its completion rejected.
-- KEYS[1] = task hash   KEYS[2..6] = ready, delayed, running, ended, failed zsets
-- ARGV[1] = task id.  Returns 1 if the task existed.
for i = 2, 6 do want_type(KEYS[i], 'zset') end
for i = 2, 6 do redis.call('ZREM', KEYS[i], ARGV[1]) end
return redis.call('DEL', KEYS[1])
