-- status.lua: report what holds one dedup key's slot. Read-only, O(1).
--
-- KEYS[1]  slots hash       <ns>:slots:<q>
-- KEYS[2]  scheduled zset   rq:scheduled:<q>
-- KEYS[3]  started zset     rq:wip:<q>
-- ARGV[1]  job key prefix   "rq:job:"
-- ARGV[2]  executions prefix "rq:executions:"
-- ARGV[3]  field            encoded dedup key
-- Reply: {holder_id, rq_status, enqueued_at, started_at, scheduled_for} when a pending
--        job holds the slot; {} when the slot is free (empty, or its holder is stale).

local slots_key, scheduled_key, wip_key = KEYS[1], KEYS[2], KEYS[3]
local job_prefix, exec_prefix, field = ARGV[1], ARGV[2], ARGV[3]

local holder = redis.call('HGET', slots_key, field)
if not holder then
  return {}
end
local info = dk_inspect(job_prefix, exec_prefix, wip_key, scheduled_key, holder, dk_now())
if not info then
  return {}
end
return { holder, info[1], info[2], info[3], info[4] }
