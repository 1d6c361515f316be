-- status.lua: report what holds each given dedup key's slot, and the key's last run.
-- Read-only, O(1) per key; one call answers one key (status) or many (status_many).
--
-- KEYS[1]  slots hash       <ns>:slots:<q>
-- KEYS[2]  followups hash   <ns>:followups:<q>
-- KEYS[3]  scheduled zset   rq:scheduled:<q>
-- KEYS[4]  started zset     rq:wip:<q>
-- KEYS[5]  last hash        <ns>:last:<q>
-- KEYS[6]  intermediate     rq:queue:<q>:intermediate (ids a worker dequeued, not yet started)
-- ARGV[1]  job_prefix       "rq:job:"
-- ARGV[2]  executions_prefix "rq:executions:"
-- ARGV[3..] fields          encoded dedup keys, at least one
-- Reply: one entry per field, in order:
--        {holder_id, rq_status, enqueued_at, started_at, scheduled_for, follow_up_id, last}
--        holder_id is '' when the slot is free (empty, or its holder is over and no
--        follow-up waits); last is "<job id>|<final status>|<ended at>" or ''. When the
--        holder is over but its slot not yet reused, last is read from the holder itself.

local K = {
  slots = KEYS[1], followups = KEYS[2], scheduled = KEYS[3], started = KEYS[4], intermediate = KEYS[6],
  job_prefix = ARGV[1], exec_prefix = ARGV[2],
}
local last_key, now = KEYS[5], dk_now()

local function status_of(field)
  local holder, info, reason, follow = dk_resolve(K, field, now, false)
  local last = redis.call('HGET', last_key, field) or ''
  if not info then
    if holder then
      local f = redis.call('HMGET', K.job_prefix .. holder, 'status', 'ended_at')
      local status = (reason == 'ended' and f[1]) or reason
      last = holder .. '|' .. status .. '|' .. (f[2] or '')
    end
    return { '', '', '', '', '', '', last }
  end
  return { holder, info[1], info[2], info[3], info[4], follow or '', last }
end

local replies = {}
for i = 3, #ARGV do
  replies[#replies + 1] = status_of(ARGV[i])
end
return replies
