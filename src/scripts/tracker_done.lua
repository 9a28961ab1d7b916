-- The consumer holding fencing token ARGV[2] reports task ARGV[1]: done
-- (ARGV[3] = '1') or failed with reason ARGV[4]. A report by a stale token
-- is refused; the same report retried after a lost reply gets the same
-- answer.
-- KEYS: 1 task record, 2 processing zset, 3 released list, 4 stats hash
-- ARGV: 1 task, 2 fence, 3 ok, 4 reason, 5 retention ms, 6 wake channel
-- Reply: {'completed' | 'released' | 'failed'} | {'stale', state or 'gone'}
local t = task_read(KEYS[1])
want_type(KEYS[2], 'zset')
want_type(KEYS[3], 'list')
want_type(KEYS[4], 'hash')
if not t then return {'stale', 'gone'} end
if t.state ~= 'processing' or t.fence ~= ARGV[2] then
  local prefix = ARGV[2] .. ':'
  local r = t.reported or ''
  if string.sub(r, 1, #prefix) == prefix then
    local outcome = string.sub(r, #prefix + 1)
    if outcome == 'completed' or outcome == 'released' or outcome == 'failed' then
      return {outcome}
    end
  end
  return {'stale', t.state}
end
local reason = nil
if ARGV[3] ~= '1' then reason = ARGV[4] end
return {end_attempt(KEYS[1], t, ARGV[1], reason, '', now_ms(), KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[5]), ARGV[6])}
