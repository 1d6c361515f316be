-- cancel.lua: take a dedup key's pending job out of RQ and free the slot, when safe.
-- A queued job is removed from the queue list, a scheduled one from the scheduled
-- registry, a deferred one from the deferred registry; it gets status 'canceled' and an
-- entry in the canceled registry, as RQ's own Job.cancel does. When the holder runs and a
-- follow-up waits, the follow-up is what is cancelled. Not cancelled:
--   running  - the job runs; only RQ's stop command may touch it (Python sends it)
--   dequeued - status 'queued' but no longer in the list: a worker took it between its
--              two dequeue steps and will start it; freeing the slot would admit a twin.
--              Found in no list at all, it is marked (dk_adrift): still so ARGV[4]
--              seconds later, its worker died between pop and start and the key is free
--   due      - scheduled to run within ARGV[4] seconds: RQ's scheduler may already have
--              read it and would re-queue it after we removed it (its promotion is not
--              atomic), so the slot must stay
--
-- KEYS[1]  slots hash       <ns>:slots:<q>
-- KEYS[2]  stats hash       <ns>:stats:<q>
-- KEYS[3]  followups hash   <ns>:followups:<q>
-- KEYS[4]  queue list       rq:queue:<q>
-- KEYS[5]  scheduled zset   rq:scheduled:<q>
-- KEYS[6]  started zset     rq:wip:<q>
-- KEYS[7]  deferred zset    rq:deferred:<q>
-- KEYS[8]  canceled zset    rq:canceled:<q>, score = when cancelled (epoch s)
-- KEYS[9]  last hash        <ns>:last:<q>
-- KEYS[10] intermediate     rq:queue:<q>:intermediate (ids a worker dequeued, not yet started)
-- KEYS[11] history zset     <ns>:history:<q>, member = encoded key, score = when its last run ended (epoch s)
-- ARGV[1]  job_prefix       "rq:job:"
-- ARGV[2]  executions_prefix "rq:executions:"
-- ARGV[3]  field            encoded dedup key
-- ARGV[4]  due_margin       seconds; a scheduled job due before now + margin is kept
-- ARGV[5]  now_text         RQ-format UTC time, enqueued_at of a follow-up released here
-- ARGV[6]  dependents_template  RQ's key of a job's dependents set, "rq:job:%s:dependents"
-- ARGV[7]  rate_limited_template RQ 3's key of a rate limit's waiting zset, "rq:rl:%s:rate_limited"; '' on RQ 2
--   ready    - (RQ 3) status 'ready_to_enqueue': RQ is moving it from rq:ready:<q> onto the
--              queue right now (a follow-up whose holder ended); it runs
-- A rate-limited job (RQ 3, status 'rate_limited') is withdrawn as RQ's Job.cancel does:
-- removed from its rate limit's waiting zset, status 'canceled'.
-- Reply: {outcome, job_id, rq_status, rate_limit_key} with outcome one of
--   'cancelled', 'free' (nothing pending; job_id may be ''), 'running', 'dequeued', 'due', 'ready';
--   rate_limit_key: the cancelled job's RQ 3 rate limit ('' if none, or not cancelled), so
--   Python runs RQ's RateLimitRegistry.cancel only then

local K = {
  slots = KEYS[1], followups = KEYS[3], queue = KEYS[4], scheduled = KEYS[5], started = KEYS[6],
  deferred = KEYS[7], canceled = KEYS[8], last = KEYS[9], intermediate = KEYS[10], history = KEYS[11],
  job_prefix = ARGV[1],
  exec_prefix = ARGV[2], dependents = ARGV[6], rate_limited = ARGV[7],
}
local stats_key = KEYS[2]
local field, due_margin, now_text = ARGV[3], tonumber(ARGV[4]), ARGV[5]

local now = dk_now()
local holder, info, reason, follow = dk_resolve(K, field, now, true, now_text)
if not info then
  if holder then
    dk_remember(K, field, holder, reason, now_text, now)
    redis.call('HDEL', K.slots, field)
  end
  return { 'free', holder or '', '', '' }
end

if follow then
  local finfo = dk_pending(K, follow, now)
  local outcome = dk_withdraw(K, follow, finfo, now, due_margin)
  if outcome ~= 'cancelled' then
    return { outcome, follow, finfo[1], '' }
  end
  redis.call('HDEL', K.followups, field)
  redis.call('HINCRBY', stats_key, 'cancelled', 1)
  return { 'cancelled', follow, finfo[1], redis.call('HGET', K.job_prefix .. follow, 'rate_limit_key') or '' }
end

local outcome = dk_withdraw(K, holder, info, now, due_margin)
if outcome ~= 'cancelled' then
  return { outcome, holder, info[1], '' }
end
dk_remember(K, field, holder, nil, now_text, now)
redis.call('HDEL', K.slots, field)
redis.call('HINCRBY', stats_key, 'cancelled', 1)
return { 'cancelled', holder, info[1], redis.call('HGET', K.job_prefix .. holder, 'rate_limit_key') or '' }
