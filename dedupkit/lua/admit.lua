-- admit.lua: admit a batch of jobs, each only if its dedup key's slot is free.
-- For each request, in order and atomically with the others: find the slot's pending job
-- (dk_resolve, which asks dk_pending). A replay of a call that already admitted this job
-- id answers 'admitted' again and writes nothing. An existing job hash is refused
-- ('collision') before anything is withdrawn. Free: write the prepared
-- RQ job hash, register the queue, push the id onto the queue (or ZADD the scheduled
-- registry) and point the slot at the new job. Pending: apply the request's policy:
--   reject     answer 'conflict' with the holder
--   replace    withdraw a queued, scheduled or (RQ 3) rate-limited holder (status
--              'canceled') and admit; a running, just-dequeued, due or (RQ 3) ready holder
--              is kept: 'conflict'
--   follow_up  holder running: admit the job as RQ-deferred on the holder (it runs when
--              the holder ends, success or failure); a waiting follow-up answers
--              'conflict' with its id; a holder not running, or one with RQ repeats
--              left (RQ would run the follow-up beside its next repeat): 'conflict'
-- Free, but the request's cooldown (its ARGV 'cooldown') has not passed since the key's
-- last run ended (the history zset's score: dk_ended, Redis clock): 'conflict' with note
-- 'cooldown' and when the key may run again; a follow_up request is admitted instead as
-- a job scheduled at that time (note 'cooldown'), which holds the slot while it waits.
-- Then check up to ARGV[4] slots per request, walking the slots hash with a cursor, and
-- delete those whose job has ended, so slots of finished jobs do not pile up; drop the
-- last-run records of runs that ended more than ARGV[11] seconds ago, the oldest first,
-- as many as gc's budget plus one per request (a request adds at most one record):
-- bounded history.
--
-- KEYS[1]  slots hash       <ns>:slots:<q>, field = encoded dedup key, value = job id
-- KEYS[2]  gc cursor        <ns>:gcpos:<q>, string "<w|d> <HSCAN cursor> <skip> <walk start>":
--                           where gc's walk through the slots hash stands (see the gc below)
-- KEYS[3]  stats hash       <ns>:stats:<q>, decision -> count
-- KEYS[4]  followups hash   <ns>:followups:<q>, field = encoded key, value = follow-up id
-- KEYS[5]  queue list       rq:queue:<q>
-- KEYS[6]  queues set       rq:queues (member: the queue key)
-- KEYS[7]  scheduled zset   rq:scheduled:<q>, score = run time (epoch s)
-- KEYS[8]  started zset     rq:wip:<q>, member <job_id>:<exec_id>, score = lease end (epoch s)
-- KEYS[9]  deferred zset    rq:deferred:<q>
-- KEYS[10] canceled zset    rq:canceled:<q>, score = when cancelled (epoch s)
-- KEYS[11] last hash        <ns>:last:<q>, field = encoded key, value = "<job id>|<status>|<ended at>"
-- KEYS[12] intermediate     rq:queue:<q>:intermediate (ids a worker dequeued, not yet started)
-- KEYS[13] history zset     <ns>:history:<q>, member = encoded key, score = when its last run ended (epoch s)
-- KEYS[14..] job hash       rq:job:<new job id>, one per request, in request order
-- ARGV[1]  job_prefix       "rq:job:" (for holders' ids, which Python cannot know)
-- ARGV[2]  executions_prefix "rq:executions:"
-- ARGV[3]  n                number of requests (= #KEYS - 13)
-- ARGV[4]  gc_budget        slots to check per request (at most 100 a call, or the budget
--                           itself if larger; >= 0)
-- ARGV[5]  gc_min_age       seconds between the starts of two walks through the slots hash
-- ARGV[6]  due_margin       seconds; a scheduled holder due before now + margin is kept
-- ARGV[7]  now_text         RQ-format UTC time, written as enqueued_at of a released follow-up
-- ARGV[8]  dependents_template  RQ's key of a job's dependents set, "rq:job:%s:dependents"
-- ARGV[9]  dependencies_template RQ's key of a job's dependencies set, "rq:job::%s:dependencies"
-- ARGV[10] rate_limited_template RQ 3's key of a rate limit's waiting zset, "rq:rl:%s:rate_limited";
--                           '' on RQ 2 (for withdrawing a 'rate_limited' holder)
-- ARGV[11] retention        seconds a last-run record is kept after its run ended (> 0)
-- ARGV[12..] requests, per request, in order:
--          field            encoded dedup key
--          job_id           the new job's id
--          mode             'back' (RPUSH), 'front' (LPUSH), 'schedule' (ZADD KEYS[7]) or (RQ 3)
--                           'rate_limit' (ZADD the waiting zset of the job's rate_limit_key;
--                           Python then runs RQ's acquire script, which queues it)
--          run_at           epoch seconds for 'schedule', '' otherwise
--          job_ttl          seconds the job hash may live before it runs, 0 = no expiry
--          policy           'reject', 'replace' or 'follow_up'
--          cooldown         seconds the key stays closed after its last run ended, 0 = none
--          nfields          number of job hash field/value pairs that follow
--          field, value...  2 * nfields strings, the RQ job hash (status already set)
-- Reply: one array per request (10 fields; the 10th, last_run, is the key's last-run record
--   "<job id>|<final status>|<ended at>" or '' after the decision, as status.lua reads it):
--   {'admitted', job_id, rq_status, enqueued_at, started_at, scheduled_for, recovered, note, replaced_rl, last_run}
--     recovered = '' or why the previous holder was stale ('gone'|'ended'|'dead'|'lost');
--     replaced_rl = the replaced job's RQ 3 rate limit key, '' if none (Python then runs
--     RQ's RateLimitRegistry.cancel for it, as RQ's Job.cancel does);
--     note = '' | 'replaced:<old id>' | 'follow_up:<running holder id>' | 'replayed' |
--            'cooldown' (a follow_up scheduled at the cooldown's end: scheduled_for)
--     (a replay: rq_status .. scheduled_for describe the job now, all '' once it ended)
--   {'conflict', holder_id, rq_status, enqueued_at, started_at, scheduled_for, '', note, follow_up_id, last_run}
--     note = '' | why the policy could not apply ('running'|'dequeued'|'due'|'ready'|
--            'not_running'|'repeating'|'coalesced' (job_id is then the waiting follow-up)|
--            'cooldown' (no holder: job_id is the last run's, rq_status .. scheduled_for '')
--     follow_up_id = '' or the follow-up waiting behind a running holder; for 'cooldown',
--            when the key may be admitted again (epoch s, Redis clock)
--   {'collision', job_id, '', '', '', '', '', '', '', last_run}   the job hash existed; nothing written
--   {'error', job_id, message, '', '', '', '', '', '', ''}  this request failed (damaged data);
--     its writes may be partial only if the failure came after the first write

local K = {
  slots = KEYS[1], followups = KEYS[4], queue = KEYS[5], scheduled = KEYS[7], started = KEYS[8],
  deferred = KEYS[9], canceled = KEYS[10], last = KEYS[11], intermediate = KEYS[12], job_prefix = ARGV[1],
  exec_prefix = ARGV[2], dependents = ARGV[8], rate_limited = ARGV[10], history = KEYS[13],
}
local dependencies_tpl = ARGV[9]
local gc_key, stats_key, queues_key = KEYS[2], KEYS[3], KEYS[6]
local n, gc_budget, gc_min_age = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local due_margin, now_text, retention = tonumber(ARGV[6]), ARGV[7], tonumber(ARGV[11])
local FIXED_KEYS, FIRST_REQUEST, REQUEST_FIELDS = 13, 12, 8

if n ~= #KEYS - FIXED_KEYS then
  return redis.error_reply('ERR admit.lua: ARGV[3]=' .. tostring(ARGV[3]) .. ' but ' .. (#KEYS - FIXED_KEYS)
    .. ' job keys')
end

local now = dk_now()
local replies = {}
local counts = {}
local function count(name)
  counts[name] = (counts[name] or 0) + 1
end

-- A replayed call (redis-py resends a command whose reply was lost): this very job was
-- admitted by the first run. Answer that, and change nothing. nil when it is no replay.
local function replay(job_id, exists, field, holder, info, follow)
  if holder == job_id or follow == job_id or (exists and
      string.sub(redis.call('HGET', K.last, field) or '', 1, #job_id + 1) == job_id .. '|') then
    count('replayed')
    local mine = (holder == job_id and info) or (follow == job_id and dk_pending(K, follow, now)) or nil
    if mine then
      return { 'admitted', job_id, mine[1], mine[2], mine[3], mine[4], '', 'replayed', '' }
    end
    return { 'admitted', job_id, '', '', '', '', '', 'replayed', '' }
  end
  return nil
end

-- The request's policy against the slot's pending holder (info nil: the key is free).
-- Returns whether to admit, the reply's note, the running holder a follow-up waits for,
-- the replaced job's RQ 3 rate limit key, and the holder and info to answer with (a
-- coalesced request answers with the waiting follow-up).
local function apply_policy(policy, field, holder, info, follow)
  local admit, note, parent, replaced_rl = (info == nil), '', nil, ''
  if info and policy == 'replace' then
    local outcome = dk_withdraw(K, holder, info, now, due_margin)
    if outcome == 'cancelled' then
      replaced_rl = redis.call('HGET', K.job_prefix .. holder, 'rate_limit_key') or ''
      dk_remember(K, field, holder, nil, now_text, now)
      -- A waiting follow-up belongs to the holder being replaced: it goes too (a deferred
      -- job always can; one RQ 3 already moved on is left to run and keeps its entry).
      if follow and dk_withdraw(K, follow, dk_pending(K, follow, now), now, due_margin) == 'cancelled' then
        redis.call('HDEL', K.followups, field)
        count('cancelled')
      end
      admit, note = true, 'replaced:' .. holder
      count('replaced')
    else
      note = outcome
    end
  elseif info and policy == 'follow_up' then
    if follow then
      holder, info, note = follow, dk_pending(K, follow, now), 'coalesced'
    elseif info[1] ~= 'started' then
      note = 'not_running'
    elseif (tonumber(redis.call('HGET', K.job_prefix .. holder, 'repeats_left')) or 0) > 0 then
      -- RQ re-queues a repeating job and enqueues its dependents in one transaction:
      -- a follow-up would run beside the holder's next repeat.
      note = 'repeating'
    else
      admit, note, parent = true, 'follow_up:' .. holder, holder
    end
  end
  return admit, note, parent, replaced_rl, holder, info
end

-- When the free key may run again: its last run's end (dk_ended) plus cooldown, while
-- that is ahead; nil otherwise. A holder just found over is recorded as the last run
-- first (dk_remember dates a run once: seen again, its end never moves later).
local function cooling(field, holder, reason, cooldown)
  if cooldown <= 0 then
    return nil
  end
  local ended
  if holder and reason then
    ended = dk_remember(K, field, holder, reason, now_text, now)
  else
    ended = tonumber(redis.call('ZSCORE', K.history, field))
  end
  if ended and ended + cooldown > now then
    return ended + cooldown
  end
  return nil
end

-- Write the prepared RQ job hash (an existing one was refused before) and register the
-- queue. Returns the status and enqueued_at it carries, and its RQ 3 rate limit key.
local function write_job(job_key, job_ttl, mode, first, last)
  local status, enqueued_at, rl_key = '', '', nil
  for j = first, last, 2 do
    if ARGV[j] == 'status' then status = ARGV[j + 1] end
    if ARGV[j] == 'enqueued_at' then enqueued_at = ARGV[j + 1] end
    if ARGV[j] == 'rate_limit_key' then rl_key = ARGV[j + 1] end
  end
  if mode == 'rate_limit' and (not rl_key or K.rate_limited == '') then
    error('admit.lua: rate_limit mode without a rate_limit_key or RQ 3 template')
  end
  redis.call('HSET', job_key, unpack(ARGV, first, last))
  if job_ttl > 0 then
    redis.call('EXPIRE', job_key, job_ttl)
  end
  redis.call('SADD', queues_key, K.queue)
  return status, enqueued_at, rl_key
end

-- What RQ's Queue.enqueue does for depends_on=Dependency([parent], allow_failure=True)
-- when the parent has not finished: deferred, registered as the parent's dependent. The
-- slot stays with the parent; the followups hash names this job. Returns the new job's
-- status, enqueued_at and scheduled_for.
local function defer(job_key, job_id, field, parent)
  local status, enqueued_at
  status, enqueued_at = 'deferred', ''
  redis.call('HSET', job_key, 'status', status, 'dependency_id', parent,
    'dependency_ids', '["' .. parent .. '"]', 'allow_dependency_failures', '1')
  redis.call('HDEL', job_key, 'enqueued_at')
  redis.call('ZADD', K.deferred, now, job_id)
  redis.call('SADD', string.format(K.dependents, parent), job_id)
  redis.call('SADD', string.format(dependencies_tpl, job_id), parent)
  redis.call('HSET', K.followups, field, job_id)
  count('follow_up')
  return status, enqueued_at, ''
end

-- Put the new job where RQ takes it from (scheduled registry, rate limit zset or queue),
-- record a stale predecessor as the key's last run, and point the slot at the new job.
-- Returns its scheduled_for.
local function place(mode, job_id, run_at, rl_key, field, holder, reason)
  local scheduled_for = ''
  if mode == 'schedule' then
    redis.call('ZADD', K.scheduled, run_at, job_id)
    scheduled_for = run_at
  elseif mode == 'rate_limit' then
    -- RQ 3's Queue._enqueue_rate_limited_job: wait in the limit's zset, scored by now.
    redis.call('ZADD', string.format(K.rate_limited, rl_key), now, job_id)
  elseif mode == 'front' then
    redis.call('LPUSH', K.queue, job_id)
  else
    redis.call('RPUSH', K.queue, job_id)
  end
  if holder and reason == 'dead' then
    count('dead')
  end
  if holder and reason then
    count('recovered')
    dk_remember(K, field, holder, reason, now_text, now)
  end
  redis.call('HSET', K.slots, field, job_id)
  return scheduled_for
end

-- One request; returns its reply. Runs under pcall: a request that meets damaged data
-- (say a key of the wrong type) answers 'error' and the others in the batch go on.
-- Steps: find the holder, answer a replay, refuse a collision, apply the policy, then
-- either answer the conflict or write the job and take the slot (or wait behind it).
local function decide(i, pos, last)
  local field, job_id, mode, run_at = ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3]
  local job_ttl, policy, cooldown = tonumber(ARGV[pos + 4]), ARGV[pos + 5], tonumber(ARGV[pos + 6])
  local first = pos + REQUEST_FIELDS
  local job_key = KEYS[FIXED_KEYS + i]

  local holder, info, reason, follow = dk_resolve(K, field, now, true, now_text)
  local exists = redis.call('EXISTS', job_key) == 1
  local replayed = replay(job_id, exists, field, holder, info, follow)
  if replayed then
    return replayed
  end
  -- Before anything is withdrawn: an existing hash is never written over.
  if exists then
    count('collision')
    return { 'collision', job_id, '', '', '', '', '', '', '' }
  end

  local reopens = (not info) and cooling(field, holder, reason, cooldown)
  if reopens and mode == 'schedule' and tonumber(run_at) >= reopens then
    reopens = nil  -- scheduled to run after the cooldown anyway
  end
  if reopens and policy ~= 'follow_up' then
    count('cooldown')
    local last_id = string.match(redis.call('HGET', K.last, field) or '', '^([^|]*)|') or ''
    return { 'conflict', last_id, '', '', '', '', '', 'cooldown', string.format('%.6f', reopens) }
  end

  local admit, note, parent, replaced_rl
  admit, note, parent, replaced_rl, holder, info = apply_policy(policy, field, holder, info, follow)
  if not admit then
    count('conflict')
    local waiting = (note ~= 'coalesced' and follow) or ''
    return { 'conflict', holder, info[1], info[2], info[3], info[4], '', note, waiting }
  end

  local status, enqueued_at, rl_key = write_job(job_key, job_ttl, mode, first, last)
  if reopens then
    -- A follow_up waits out the cooldown in RQ's scheduled registry, as enqueue_at's
    -- jobs do; RQ's scheduler queues it at the first whole second the key reopens.
    -- As RQ's enqueue_at writes it: 'scheduled', enqueued_at '' (its scheduler sets it).
    mode, run_at, note = 'schedule', math.ceil(reopens), 'cooldown'
    status, enqueued_at = 'scheduled', ''
    redis.call('HSET', job_key, 'status', status, 'enqueued_at', enqueued_at)
  end
  local scheduled_for
  if parent then
    status, enqueued_at, scheduled_for = defer(job_key, job_id, field, parent)
  else
    scheduled_for = place(mode, job_id, run_at, rl_key, field, holder, reason)
  end
  count('admitted')
  return { 'admitted', job_id, status, enqueued_at, '', scheduled_for, reason or '', note, replaced_rl }
end

local pos = FIRST_REQUEST
for i = 1, n do
  local nfields = tonumber(ARGV[pos + REQUEST_FIELDS - 1])
  local last = pos + REQUEST_FIELDS - 1 + 2 * nfields
  local ok, reply = pcall(decide, i, pos, last)
  if not ok then
    count('error')
    local message = type(reply) == 'table' and (reply.err or reply[1]) or tostring(reply)
    reply = { 'error', ARGV[pos + 1], tostring(message), '', '', '', '', '', '', '' }
  else
    -- Every answer carries the key's complete status, its last run included.
    local got, record = pcall(redis.call, 'HGET', K.last, ARGV[pos])
    reply[10] = (got and record) or ''
  end
  replies[i] = reply
  pos = last + 1
end

-- Incremental garbage collection of slots whose job has ended: a walk through the slots
-- hash with HSCAN, a fixed budget per call, so no call ever scans the whole hash. KEYS[2]
-- keeps where the walk stands: walking ('w') or done ('d'), the HSCAN cursor, how many
-- entries of that cursor's page were already checked (a page may hold more than the
-- budget: a small hash answers whole), and when this walk started. A new walk starts no
-- sooner than gc_min_age seconds after the last one did, so a slot is checked about once
-- per gc_min_age at most, and not in its first gc_min_age (young, below). The walk may
-- miss or repeat a slot when the hash changes under it; the next walk sees it.
-- Housekeeping runs under pcall: damaged data here must not turn the decisions above into
-- an error reply.
local function collect(field)
  local holder, alive, reason = dk_resolve(K, field, now, true, now_text)
  if not alive then
    if holder then
      dk_remember(K, field, holder, reason, now_text, now)
    end
    redis.call('HDEL', K.slots, field)
    count('swept')
    return 1
  end
  return 0
end

-- A slot whose holder dedupkit admitted less than gc_min_age ago is passed over without a
-- command: its id ends with the admission's microseconds (generate_job_id, the client's
-- clock; one more than an hour ahead is not trusted), it has most likely not ended, and
-- the next walk, gc_min_age later at the soonest, looks at it. Other ids are checked.
local function young(holder)
  local t = tonumber(string.match(holder, '_(%d+)$'))
  return t ~= nil and t / 1000000 > now - gc_min_age and t / 1000000 < now + 3600
end

-- The budget grows with the batch (up to 100 slots a call), so a scheduler that only
-- sends big batches still collects as fast as many single admissions would.
local budget = math.min(gc_budget * n, math.max(gc_budget, 100))
if budget > 0 then
  pcall(function()
    local saved = redis.call('GET', gc_key) or ''
    local state, cursor, skip, started = string.match(saved, '^([wd]) (%d+) (%d+) (%S+)$')
    skip, started = tonumber(skip), tonumber(started)
    if state ~= 'w' or not skip or not started then
      if state == 'd' and started and now - started < gc_min_age then
        return  -- the last walk started less than gc_min_age ago
      end
      cursor, skip, started = '0', 0, now  -- a new walk
    end
    local page = redis.call('HSCAN', K.slots, cursor, 'COUNT', budget)
    local entries = page[2]
    local upto, removed = math.min(#entries / 2, skip + budget), 0
    for j = skip + 1, upto do
      if not young(entries[2 * j]) then
        local ok, gone = pcall(collect, entries[2 * j - 1])  -- a damaged slot is left for the next walk
        removed = removed + ((ok and gone) or 0)
      end
    end
    state = 'w'
    if upto < #entries / 2 then
      skip = upto - removed  -- the page, read again from the same cursor, lacks what went
    else
      cursor, skip = page[1], 0
      if cursor == '0' then
        state = 'd'  -- the walk is over
      end
    end
    redis.call('SET', gc_key, state .. ' ' .. cursor .. ' ' .. skip .. ' ' .. string.format('%.6f', started))
  end)
end

-- Bounded history: last-run records whose run ended more than `retention` seconds ago.
local trim = budget + n
if retention and retention > 0 then
  pcall(function()
    for _, field in ipairs(redis.call('ZRANGEBYSCORE', K.history, '-inf', now - retention, 'LIMIT', 0, trim)) do
      redis.call('HDEL', K.last, field)
      redis.call('ZREM', K.history, field)
      count('expired')
    end
  end)
end

pcall(function()
  for name, c in pairs(counts) do
    redis.call('HINCRBY', stats_key, name, c)
  end
end)

return replies
