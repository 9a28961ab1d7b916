-- queue_reap: tasks whose lease ran out go back to the queue (see
-- reap_expired in queue_lib), a bounded batch per call. Atomic, so two
-- reapers never re-queue one task twice. Workers also reap in every
-- queue_step call; this script is for monitors and Queue::reap_expired.
--
-- KEYS[1..6] = ready, delayed, running zsets, wake-up marker list, failed, ended zsets
-- ARGV[1] = task key prefix   ARGV[2] = batch size   ARGV[3] = queue events channel
-- Returns {requeued, failed}.
local Q = queue_keys(1)
local events = {}
local requeued, nfailed = reap_expired(Q, ARGV[1], ARGV[3], now_ms(), tonumber(ARGV[2]), events)
publish_events(ARGV[3], events)
return {requeued, nfailed}
