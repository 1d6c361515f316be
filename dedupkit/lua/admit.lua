-- admit.lua: admit a batch of jobs, each only if its dedup key's slot is free.
-- For each request, in order and atomically with the others: read the slot; if its
-- holder is still pending, answer 'conflict'; else refuse an existing job hash
-- ('collision'), write the prepared RQ job hash, register the queue, push the id onto
-- the queue (or ZADD the scheduled registry), and point the slot at the new job.
-- Then check up to ARGV[4] of the oldest slots and delete those whose job has ended,
-- so slots of finished jobs do not pile up.
--
-- KEYS[1]  slots hash       <ns>:slots:<q>, field = encoded dedup key, value = job id
-- KEYS[2]  gc zset          <ns>:gc:<q>, member = encoded key, score = last check (epoch s)
-- KEYS[3]  stats hash       <ns>:stats:<q>, decision -> count
-- KEYS[4]  queue list       rq:queue:<q>
-- KEYS[5]  queues set       rq:queues (member: the queue key)
-- KEYS[6]  scheduled zset   rq:scheduled:<q>, score = run time (epoch s)
-- KEYS[7]  started zset     rq:wip:<q>, member <job_id>:<exec_id>, score = lease end (epoch s)
-- KEYS[8..] job hash        rq:job:<new job id>, one per request, in request order
-- ARGV[1]  job key prefix   "rq:job:" (for holders' ids, which Python cannot know)
-- ARGV[2]  executions prefix "rq:executions:"
-- ARGV[3]  n                number of requests (= #KEYS - 7)
-- ARGV[4]  gc budget        how many of the oldest slots to check (integer >= 0)
-- ARGV[5]  gc min age       seconds a slot must be unchecked before gc looks at it
-- ARGV[6..] per request, in order:
--          field            encoded dedup key
--          job id           the new job's id
--          mode             'back' (RPUSH), 'front' (LPUSH) or 'schedule' (ZADD KEYS[6])
--          run at           epoch seconds for 'schedule', '' otherwise
--          job ttl          seconds the job hash may live before it runs, 0 = no expiry
--          nfields          number of job hash field/value pairs that follow
--          field, value...  2 * nfields strings, the RQ job hash (status already set)
-- Reply: one array per request:
--   {'admitted', job_id, rq_status, enqueued_at, started_at, scheduled_for, recovered}
--     recovered = '' or the reason the previous holder was stale ('gone'|'ended'|'dead')
--   {'conflict', holder_id, rq_status, enqueued_at, started_at, scheduled_for, ''}
--   {'collision', job_id, '', '', '', '', ''}   the job hash existed; nothing written

local slots_key, gc_key, stats_key = KEYS[1], KEYS[2], KEYS[3]
local queue_key, queues_key, scheduled_key, wip_key = KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local job_prefix, exec_prefix = ARGV[1], ARGV[2]
local n, gc_budget, gc_min_age = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

if n ~= #KEYS - 7 then
  return redis.error_reply('ERR admit.lua: ARGV[3]=' .. tostring(ARGV[3]) .. ' but ' .. (#KEYS - 7) .. ' job keys')
end

local now = dk_now()
local replies = {}
local counts = { admitted = 0, conflict = 0, recovered = 0, collision = 0 }
local pos = 6

for i = 1, n do
  local field, job_id, mode, run_at = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  local job_ttl, nfields = tonumber(ARGV[pos + 4]), tonumber(ARGV[pos + 5])
  local first = pos + 6
  pos = first + 2 * nfields
  local job_key = KEYS[7 + i]

  local holder = redis.call('HGET', slots_key, field)
  local info, reason = nil, ''
  if holder then
    info, reason = dk_inspect(job_prefix, exec_prefix, wip_key, scheduled_key, holder, now)
  end

  if info then
    counts.conflict = counts.conflict + 1
    replies[i] = { 'conflict', holder, info[1], info[2], info[3], info[4], '' }
  elseif redis.call('EXISTS', job_key) == 1 then
    counts.collision = counts.collision + 1
    replies[i] = { 'collision', job_id, '', '', '', '', '' }
  else
    local status, enqueued_at = '', ''
    for j = first, pos - 1, 2 do
      if ARGV[j] == 'status' then status = ARGV[j + 1] end
      if ARGV[j] == 'enqueued_at' then enqueued_at = ARGV[j + 1] end
    end
    redis.call('HSET', job_key, unpack(ARGV, first, pos - 1))
    if job_ttl > 0 then
      redis.call('EXPIRE', job_key, job_ttl)
    end
    redis.call('SADD', queues_key, queue_key)
    local scheduled_for = ''
    if mode == 'schedule' then
      redis.call('ZADD', scheduled_key, run_at, job_id)
      scheduled_for = run_at
    elseif mode == 'front' then
      redis.call('LPUSH', queue_key, job_id)
    else
      redis.call('RPUSH', queue_key, job_id)
    end
    if holder and reason == 'dead' then
      -- The holder's worker died mid-job. RQ's own cleanup would retry it if it has
      -- retries left, and that would put a second job for this key in the queue.
      redis.call('HSET', job_prefix .. holder, 'retries_left', '0')
    end
    redis.call('HSET', slots_key, field, job_id)
    redis.call('ZADD', gc_key, now, field)
    counts.admitted = counts.admitted + 1
    if holder then
      counts.recovered = counts.recovered + 1
      if reason == 'dead' then
        counts.dead = (counts.dead or 0) + 1
      end
    end
    replies[i] = { 'admitted', job_id, status, enqueued_at, '', scheduled_for, holder and reason or '' }
  end
end

-- Incremental garbage collection of slots whose job has ended: the oldest-checked
-- slots first, a fixed budget per call, so no call ever scans.
if gc_budget > 0 then
  local due = redis.call('ZRANGEBYSCORE', gc_key, '-inf', now - gc_min_age, 'LIMIT', 0, gc_budget)
  for _, field in ipairs(due) do
    local holder = redis.call('HGET', slots_key, field)
    local alive = holder and dk_inspect(job_prefix, exec_prefix, wip_key, scheduled_key, holder, now)
    if alive then
      redis.call('ZADD', gc_key, now, field)
    else
      redis.call('HDEL', slots_key, field)
      redis.call('ZREM', gc_key, field)
      counts.swept = (counts.swept or 0) + 1
    end
  end
end

for name, c in pairs(counts) do
  if c > 0 then
    redis.call('HINCRBY', stats_key, name, c)
  end
end

return replies
