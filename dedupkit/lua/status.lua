-- status.lua: report what holds one dedup key's slot. Read-only, O(1).
--
-- KEYS[1]  slots hash       <ns>:slots:<q>
-- KEYS[2]  followups hash   <ns>:followups:<q>
-- KEYS[3]  scheduled zset   rq:scheduled:<q>
-- KEYS[4]  started zset     rq:wip:<q>
-- ARGV[1]  job key prefix   "rq:job:"
-- ARGV[2]  executions prefix "rq:executions:"
-- ARGV[3]  field            encoded dedup key
-- Reply: {holder_id, rq_status, enqueued_at, started_at, scheduled_for, follow_up_id or ''}
--        when a pending job holds the slot; {} when the slot is free (empty, or its
--        holder is stale and no follow-up waits).

local K = {
  slots = KEYS[1], followups = KEYS[2], scheduled = KEYS[3], started = KEYS[4],
  job_prefix = ARGV[1], exec_prefix = ARGV[2],
}
local field = ARGV[3]

local holder, info, _, follow = dk_resolve(K, field, dk_now(), false)
if not info then
  return {}
end
return { holder, info[1], info[2], info[3], info[4], follow or '' }
