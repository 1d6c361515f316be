-- cancel.lua: take a dedup key's pending job out of RQ and free the slot, when safe.
-- A queued job is removed from the queue list, a scheduled one from the scheduled
-- registry, a deferred one from the deferred registry; it gets status 'canceled' and an
-- entry in the canceled registry, as RQ's own Job.cancel does. Not cancelled:
--   running  - the job runs; only RQ's stop command may touch it (Python sends it)
--   dequeued - status 'queued' but no longer in the list: a worker took it between its
--              two dequeue steps and will start it; freeing the slot would admit a twin
--   due      - scheduled to run within ARGV[4] seconds: RQ's scheduler may already have
--              read it and would re-queue it after we removed it (its promotion is not
--              atomic), so the slot must stay
--
-- KEYS[1]  slots hash       <ns>:slots:<q>
-- KEYS[2]  gc zset          <ns>:gc:<q>
-- KEYS[3]  stats hash       <ns>:stats:<q>
-- KEYS[4]  queue list       rq:queue:<q>
-- KEYS[5]  scheduled zset   rq:scheduled:<q>
-- KEYS[6]  started zset     rq:wip:<q>
-- KEYS[7]  deferred zset    rq:deferred:<q>
-- KEYS[8]  canceled zset    rq:canceled:<q>, score = when cancelled (epoch s)
-- ARGV[1]  job key prefix   "rq:job:"
-- ARGV[2]  executions prefix "rq:executions:"
-- ARGV[3]  field            encoded dedup key
-- ARGV[4]  due margin       seconds; a scheduled job due before now + margin is kept
-- Reply: {outcome, holder_id, rq_status} with outcome one of
--   'cancelled', 'free' (nothing pending; holder_id may be ''), 'running', 'dequeued', 'due'

local slots_key, gc_key, stats_key, queue_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local scheduled_key, wip_key, deferred_key, canceled_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local job_prefix, exec_prefix, field = ARGV[1], ARGV[2], ARGV[3]
local due_margin = tonumber(ARGV[4])

local now = dk_now()
local holder = redis.call('HGET', slots_key, field)
if not holder then
  return { 'free', '', '' }
end
local info = dk_inspect(job_prefix, exec_prefix, wip_key, scheduled_key, holder, now)
if not info then
  redis.call('HDEL', slots_key, field)
  redis.call('ZREM', gc_key, field)
  return { 'free', holder, '' }
end

local status = info[1]
if status == 'started' then
  return { 'running', holder, status }
elseif status == 'queued' then
  if redis.call('LREM', queue_key, 1, holder) == 0 then
    return { 'dequeued', holder, status }
  end
elseif status == 'scheduled' then
  if tonumber(info[4]) <= now + due_margin then
    return { 'due', holder, status }
  end
  redis.call('ZREM', scheduled_key, holder)
elseif status == 'deferred' then
  redis.call('ZREM', deferred_key, holder)
end

redis.call('HSET', job_prefix .. holder, 'status', 'canceled')
redis.call('ZADD', canceled_key, now, holder)
redis.call('HDEL', slots_key, field)
redis.call('ZREM', gc_key, field)
redis.call('HINCRBY', stats_key, 'cancelled', 1)
return { 'cancelled', holder, status }
