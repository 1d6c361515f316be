-- sweep.lua: delete the given slots whose job is no longer pending (operators' sweep;
-- Python pages through the slots hash with HSCAN and sends a small batch per call).
-- A slot whose holder is over while a follow-up waits passes to the follow-up instead.
--
-- KEYS[1]  slots hash       <ns>:slots:<q>
-- KEYS[2]  stats hash       <ns>:stats:<q>
-- KEYS[3]  followups hash   <ns>:followups:<q>
-- KEYS[4]  queue list       rq:queue:<q>
-- KEYS[5]  scheduled zset   rq:scheduled:<q>
-- KEYS[6]  started zset     rq:wip:<q>
-- KEYS[7]  deferred zset    rq:deferred:<q>
-- KEYS[8]  last hash        <ns>:last:<q>
-- KEYS[9]  intermediate     rq:queue:<q>:intermediate (ids a worker dequeued, not yet started)
-- KEYS[10] history zset     <ns>:history:<q>, member = encoded key, score = when its last run ended (epoch s)
-- ARGV[1]  job_prefix       "rq:job:"
-- ARGV[2]  executions_prefix "rq:executions:"
-- ARGV[3]  now_text         RQ-format UTC time, enqueued_at of a follow-up released here
-- ARGV[4]  dependents_template  RQ's key of a job's dependents set, "rq:job:%s:dependents"
-- ARGV[5..] fields          encoded dedup keys to check
-- Reply: the number of slots deleted

local K = {
  slots = KEYS[1], followups = KEYS[3], queue = KEYS[4], scheduled = KEYS[5], started = KEYS[6],
  deferred = KEYS[7], last = KEYS[8], intermediate = KEYS[9], history = KEYS[10],
  job_prefix = ARGV[1], exec_prefix = ARGV[2], dependents = ARGV[4],
}
local stats_key, now_text = KEYS[2], ARGV[3]

local now = dk_now()
local deleted = 0
for i = 5, #ARGV do
  local field = ARGV[i]
  local holder, info, reason = dk_resolve(K, field, now, true, now_text)
  if not info and holder then
    dk_remember(K, field, holder, reason, now_text, now)
  end
  if not info and redis.call('HDEL', K.slots, field) == 1 then
    deleted = deleted + 1
  end
end
if deleted > 0 then
  redis.call('HINCRBY', stats_key, 'swept', deleted)
end
return deleted
