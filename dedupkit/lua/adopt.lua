-- adopt.lua: give pending jobs enqueued before dedupkit their key's slot (a one-off
-- migration, so jobs already queued keep counting; on RQ 3 also jobs waiting in a rate
-- limit, status rate_limited, which dk_pending holds like queued ones). A slot whose
-- pending holder is another job is left alone and reported: that key had duplicates
-- before dedupkit.
--
-- KEYS[1]  slots hash       <ns>:slots:<q>
-- KEYS[2]  followups hash   <ns>:followups:<q>
-- KEYS[3]  scheduled zset   rq:scheduled:<q>
-- KEYS[4]  started zset     rq:wip:<q>
-- KEYS[5]  intermediate     rq:queue:<q>:intermediate (ids a worker dequeued, not yet started)
-- ARGV[1]  job_prefix       "rq:job:"
-- ARGV[2]  executions_prefix "rq:executions:"
-- ARGV[3..] pairs           field (encoded dedup key), job id; repeated
-- Reply: one string per pair: 'adopted', 'already' (the slot names this job),
--        'held:<holder id>' (another pending job holds the slot), 'not_pending'

local K = {
  slots = KEYS[1], followups = KEYS[2], scheduled = KEYS[3], started = KEYS[4], intermediate = KEYS[5],
  job_prefix = ARGV[1], exec_prefix = ARGV[2],
}

local now = dk_now()
local replies = {}
for i = 3, #ARGV - 1, 2 do
  local field, job_id = ARGV[i], ARGV[i + 1]
  local holder, info = dk_resolve(K, field, now, false)
  if info and holder == job_id then
    replies[#replies + 1] = 'already'
  elseif info then
    replies[#replies + 1] = 'held:' .. holder
  elseif not dk_pending(K, job_id, now) then
    replies[#replies + 1] = 'not_pending'
  else
    redis.call('HSET', K.slots, field, job_id)
    replies[#replies + 1] = 'adopted'
  end
end
return replies
