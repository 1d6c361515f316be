-- _common.lua: helpers shared by the slot scripts; Python prepends this file to admit.lua,
-- status.lua, cancel.lua, sweep.lua and adopt.lua when it loads them (the lease scripts
-- stand alone). It reads no KEYS or ARGV: each script passes its keys in a table
-- K = {slots, followups, last, queue, scheduled, started, deferred, canceled, intermediate,
-- job_prefix, exec_prefix, dependents, rate_limited} (entries a script does not need are
-- nil; 'dependents' is RQ's string.format template of a job's dependents set,
-- 'rate_limited' RQ 3's template of a rate limit's waiting zset, '' on RQ 2; 'last' is the
-- hash of each key's last run, "<job id>|<final status>|<ended at>"; 'history' the zset
-- indexing it by when each run ended, epoch s on the Redis clock).
--
-- dk_now()        Redis server time, epoch seconds (float). Every lease, due time and
--                 gc age is judged by this clock, one for every client. (The RQ-format
--                 times written into job hashes, now_text, come from the caller, as RQ's
--                 own enqueued_at does.)
-- dk_lease(K, job_id, now, wip_only) -> 'live' | 'expired' | nil   the job's RQ execution leases
-- dk_lost(mark, enqueued_at, now) -> bool   a queued job marked adrift (see DK_ADRIFT) is lost
-- dk_unsettled(K, job_id, lease, retries_left) -> bool   RQ's maintenance still owes it a retry
-- dk_pending(K, job_id, now)     THE rule for "pending", used by every script:
--   -> {state, enqueued_at, started_at, scheduled_for}  the job holds its key; state is
--      'queued', 'scheduled', 'deferred', 'started' (running, or RQ must still settle it),
--      or RQ 3's 'ready_to_enqueue' / 'rate_limited'
--   -> nil, reason  when it no longer does; reason is 'gone' (hash gone, a bare heartbeat
--      hash, or an orphan 'scheduled'), 'ended' (a final status), 'dead' (started, every
--      lease expired, no retries left) or 'lost' (popped by a worker that died before
--      starting it: see dk_lost)
-- dk_release(K, job_id, parent_id, enqueued_at)
--   enqueue a waiting follow-up as RQ does a deferred job whose parent ended
-- dk_remember(K, field, job_id, reason, now_text, now) -> ended (epoch s, Redis clock)
--   record a holder that is over as the key's last run (status 'dead', 'gone' or 'lost'
--   when that is why; else RQ's status; ended at: RQ's ended_at, else now_text), and
--   index it in K.history (when given) by when it ended: dk_ended, or the earlier end
--   already indexed for this same job
-- dk_ended(ended_at, now) -> epoch s   when a run ended, on the Redis clock: RQ's
--   ended_at (the worker's clock) no later than now; now when there is none
-- dk_epoch(text) -> epoch s | nil   an RQ-format UTC time ('2026-01-02T03:04:05.123456Z')
-- dk_resolve(K, field, now, write, enqueued_at)
--   -> holder_id, info, reason, follow_id   the slot's pending job (info nil when free),
--      and a waiting follow-up. When the holder is over, its follow-up becomes the holder
--      (written only when write is true; released with enqueued_at if it still waits),
--      pending or, if it has run too, as the last run.
-- dk_adrift(K, job_id, info, now, margin)   mark a queued job found in no list (dk_lost)
-- dk_withdraw(K, job_id, info, now, due_margin)
--   -> 'cancelled' | 'running' | 'dequeued' | 'due' | 'ready'   take a pending job out of
--      RQ as RQ's Job.cancel does (status 'canceled', canceled registry), when that is safe;
--      a queued job found in no list is marked for dk_lost (needs K.intermediate).

local function dk_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- How a job's executions stand: 'live' when one holds a lease that has not expired,
-- 'expired' when only expired ones remain in rq:wip:<q> (RQ's StartedJobRegistry.cleanup
-- has not settled the job yet), nil when the job has none. O(1): the job's own
-- executions zset names them (we look at the 4 newest). The lease is the execution's
-- score in rq:wip:<q> (RQ's heartbeat pushes it to now + ttl; a SIGKILLed worker stops
-- pushing). RQ's own Job.cancel/Job.delete of a running job and its cleanup take that
-- entry away while the horse may still run; the heartbeat then still pushes the
-- execution's score in the executions zset to now + ttl + 60 (rq/executions.py
-- ExecutionRegistry.add), so without a wip entry that score less 60 s is the lease.
-- That zset also outlives a job hash dropped by a ttl or an eviction.
local DK_EXEC_SLACK = 60
local function dk_lease(K, job_id, now, wip_only)
  local found = nil
  local function live(score)
    return score == 'inf' or score == '+inf' or tonumber(score) > now
  end
  local execs = redis.call('ZREVRANGE', K.exec_prefix .. job_id, 0, 3, 'WITHSCORES')
  for i = 1, #execs, 2 do
    local score = redis.call('ZSCORE', K.started, job_id .. ':' .. execs[i])
    if score then
      if live(score) then
        return 'live'
      end
      found = 'expired'
    elseif not wip_only and (tonumber(execs[i + 1]) or 0) - DK_EXEC_SLACK > now then
      return 'live'
    end
  end
  return found
end

-- A queued job in no list has been popped by a worker, which starts it within
-- milliseconds (its execution appears) unless it died in between. A worker of one queue
-- moves the id into rq:queue:<q>:intermediate, which RQ's maintenance later fails; a
-- worker of several queues (or on Redis < 6.2) LPOPs it, and a death between that pop
-- and its start loses the job with no trace RQ would ever act on: 'queued' forever (on
-- RQ 3 also when it died just after creating the execution: RQ 3's cleanup settles only
-- 'started' jobs). The scripts that look for the id in the list (cancel, replace) mark
-- such a job in its own hash, "<its enqueued_at>|<lost from>": past that time, still
-- queued and without a wip entry, it is lost. RQ's retry, repeat and requeue write a new
-- enqueued_at, which voids the mark.
local DK_ADRIFT = 'dedupkit_adrift'

local function dk_lost(mark, enqueued_at, now)
  if not mark then
    return false
  end
  local since, lost_from = string.match(mark, '^(.*)|([^|]*)$')
  return since == enqueued_at and tonumber(lost_from) ~= nil and tonumber(lost_from) <= now
end

-- Whether RQ's maintenance still owes a job with retries left a retry, whatever the
-- job's status says:
-- - an expired lease still in rq:wip: StartedJobRegistry.cleanup retries every such
--   entry. Not only 'started' (a dead horse) and 'scheduled' (a retry whose pipeline
--   never ran): also 'finished' when RQ 2's handle_job_success re-ran its transaction
--   after a WatchError (a follow-up added to the dependents set it WATCHes) without the
--   execution it had already dropped, leaving the lease behind;
-- - an id in the intermediate list: RQ's intermediate-queue cleanup fails or retries
--   it, writing 'scheduled' before the registry entry, and takes the id off the list
--   last. That list holds the ids workers of one queue dequeued and have not started.
-- Is job_id in the list at key? LPOS, where the server has it (Redis 6.0.6+, Valkey). RQ
-- allows Redis 5, which has no LPOS: there redis.pcall answers an error, and the list is
-- read whole. That costs nothing on such a server, where RQ never fills the one list
-- asked about (the intermediate list: RQ's workers LMOVE into it only on Redis 6.2+).
-- Any other error (WRONGTYPE) is raised by LRANGE as it would be by LPOS.
local function dk_in_list(key, job_id)
  local pos = redis.pcall('LPOS', key, job_id)
  if type(pos) ~= 'table' then
    return pos ~= false
  end
  for _, id in ipairs(redis.call('LRANGE', key, 0, -1)) do
    if id == job_id then
      return true
    end
  end
  return false
end

local function dk_unsettled(K, job_id, lease, retries_left)
  if (tonumber(retries_left) or 0) <= 0 then
    return false
  end
  return lease == 'expired' or (K.intermediate ~= nil and dk_in_list(K.intermediate, job_id))
end

-- RQ's final statuses. 'created' is a job nothing has enqueued (RQ pushes no job
-- without setting 'queued' first).
local DK_OVER = { finished = true, failed = true, stopped = true, canceled = true, created = true }

-- RQ 3's two new statuses; both hold the key (RQ runs the job later on its own):
--   ready_to_enqueue  a dependent (a follow-up) whose holder has ended: RQ 3 moved it from
--                     the deferred registry to rq:ready:<q> and is pushing it onto the queue
--                     (ReadyJobRegistry.enqueue_jobs; its maintenance finishes the move if
--                     that worker died). Reported as 'queued'; cancel refuses it ('ready').
--   rate_limited      waiting in rq:rl:<rate limit key>:rate_limited for a slot of its
--                     RateLimit; RQ's own scripts promote it to 'queued'. cancel withdraws
--                     it as RQ's Job.cancel does (out of that zset, status 'canceled').
local DK_WAITING = { ready_to_enqueue = true, rate_limited = true }

-- THE rule: does job_id still hold its key? A job holds it while RQ's data says it may
-- still run. Every path that reads or frees a slot asks this function and nothing else.
-- See the README's guarantee table for the reasoning behind each line.
--   -> {state, enqueued_at, started_at, scheduled_for}  pending; state is 'queued',
--      'scheduled', 'deferred', 'started' (running, or RQ still has to settle it),
--      'ready_to_enqueue' or 'rate_limited' (RQ 3, see DK_WAITING)
--   -> nil, reason  over: 'gone' (no hash / a heartbeat ghost / an orphan 'scheduled'),
--      'ended' (a final status) or 'dead' (started, lease expired, no retries left)
local function dk_pending(K, job_id, now)
  local f = redis.call('HMGET', K.job_prefix .. job_id, 'status', 'origin', 'enqueued_at', 'started_at',
    'retries_left', DK_ADRIFT)
  local status = f[1]
  -- 'origin' is written with every job; a hash without it is a heartbeat ghost (rq#1450).
  local whole = status and f[2]
  -- A queued job has no execution RQ could have taken its wip entry from (RQ's cancel or
  -- delete of a running job): for it only the wip entry counts. RQ 3's cleanup removes
  -- the expired entry of a job that never reached 'started' and leaves it queued.
  local lease = dk_lease(K, job_id, now, status == 'queued')
  local enqueued_at, started_at = f[3] or '', f[4] or ''
  -- 1. A live lease: a horse runs it, whatever the status or hash says (RQ's own
  --    Job.cancel of a running job, a hash dropped by its ttl or an eviction, a retry
  --    that already wrote 'scheduled' while the worker's pipeline has not run).
  if lease == 'live' then
    return { 'started', enqueued_at, started_at, '' }
  end
  if not whole then
    return nil, 'gone'
  end
  -- 2. Waiting to run.
  if status == 'queued' or status == 'deferred' then
    -- 'queued' counts whether or not the id is still in the list: a worker dequeues in
    -- two steps and the id sits in neither list nor registry in between. Unless
    -- dk_adrift found it in no list, and that is long past with still no wip entry.
    if status == 'queued' and not lease and dk_lost(f[6], enqueued_at, now) then
      return nil, 'lost'
    end
    return { status, enqueued_at, started_at, '' }
  end
  -- 3. In the scheduled registry, whatever its status: RQ's scheduler promotes every due
  --    id it finds there without reading the status (rq/scheduler.py
  --    enqueue_scheduled_jobs). A retry that RQ's maintenance raced with itself can leave
  --    a 'failed' job there (seen by the step matrix, retry-interval k=45).
  local at = redis.call('ZSCORE', K.scheduled, job_id)
  if at then
    return { 'scheduled', enqueued_at, started_at, at }
  end
  -- 4. Unsettled, with retries left: RQ's maintenance still owes it a retry, whatever
  --    its status says (dk_unsettled), and a cleanup already in flight re-saves its own
  --    copy of the job: the key stays with it until RQ has decided.
  if dk_unsettled(K, job_id, lease, f[5]) then
    return { 'started', enqueued_at, started_at, '' }
  end
  if status == 'scheduled' then
    -- Neither in the registry nor being retried: an orphan nothing will run.
    return nil, 'gone'
  elseif status == 'started' then
    return nil, 'dead'
  elseif DK_OVER[status] then
    return nil, 'ended'
  elseif DK_WAITING[status] then
    return { status, enqueued_at, started_at, '' }
  end
  -- A status this script does not know (a newer RQ's): fail closed, as waiting to run.
  return { 'queued', enqueued_at, started_at, '' }
end

-- RQ enqueues a deferred job when the job it depends on ends (RQ 3 by way of its ready
-- registry: deferred -> 'ready_to_enqueue' -> queued). When that job died with its worker
-- (RQ would wait for its 10-minute maintenance) or its worker died between marking it
-- failed and enqueueing dependents, do what RQ's enqueue of a deferred job does (RQ 2 and
-- RQ 3 alike: out of the deferred registry, 'queued', pushed). RQ 2's enqueue_dependents
-- and RQ 3's move_dependents_to_ready both WATCH the dependents set we change (and read
-- it again on a retry), so neither can enqueue it a second time.
local function dk_release(K, job_id, parent_id, enqueued_at)
  local job_key = K.job_prefix .. job_id
  redis.call('ZREM', K.deferred, job_id)
  if parent_id then
    redis.call('SREM', string.format(K.dependents, parent_id), job_id)
  end
  redis.call('HSET', job_key, 'status', 'queued', 'enqueued_at', enqueued_at)
  if redis.call('HGET', job_key, 'enqueue_at_front') == '1' then
    redis.call('LPUSH', K.queue, job_id)
  else
    redis.call('RPUSH', K.queue, job_id)
  end
end

-- Days since 1970-01-01 of a civil date (H. Hinnant's days_from_civil).
local function dk_days(y, m, d)
  if m <= 2 then
    y = y - 1
  end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = (m > 2) and (m - 3) or (m + 9)
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end

local function dk_epoch(text)
  local y, mo, d, h, mi, sec, frac = string.match(text or '',
    '^(%d%d%d%d)-(%d%d)-(%d%d)T(%d%d):(%d%d):(%d%d)%.?(%d*)')
  if not y then
    return nil
  end
  local t = dk_days(tonumber(y), tonumber(mo), tonumber(d)) * 86400 + tonumber(h) * 3600 + tonumber(mi) * 60
    + tonumber(sec)
  if frac ~= '' then
    t = t + tonumber(frac) / 10 ^ #frac
  end
  return t
end

-- A run's end on the one clock every decision uses. RQ's ended_at is the worker's clock:
-- one running ahead of Redis's would stretch a cooldown past its length, so it is capped
-- at now. Without one (a cancel, a dead worker, a hash already gone) the end is when a
-- script first saw it, now: never earlier than the truth.
local function dk_ended(ended_at, now)
  local t = dk_epoch(ended_at)
  if not t or t > now then
    return now
  end
  return t
end

local function dk_remember(K, field, job_id, reason, now_text, now)
  if not K.last then
    return nil
  end
  local f = redis.call('HMGET', K.job_prefix .. job_id, 'status', 'ended_at')
  local status = f[1] or 'gone'
  if reason == 'dead' or reason == 'gone' or reason == 'lost' then
    status = reason
  end
  local ended = f[2]
  if not ended or ended == '' then
    ended = now_text
  end
  local at = dk_ended(f[2], now)
  if K.history then
    -- The same run seen again (gc after an admission saw it, a dead job RQ then marked
    -- failed): its end never moves later, or a run without ended_at would be re-dated.
    local before = redis.call('HGET', K.last, field)
    if before and string.sub(before, 1, #job_id + 1) == job_id .. '|' then
      at = math.min(at, tonumber(redis.call('ZSCORE', K.history, field)) or at)
    end
    redis.call('ZADD', K.history, at, field)
  end
  redis.call('HSET', K.last, field, job_id .. '|' .. status .. '|' .. ended)
  return at
end

local function dk_resolve(K, field, now, write, enqueued_at)
  local holder = redis.call('HGET', K.slots, field)
  local info, reason = nil, nil
  if holder then
    info, reason = dk_pending(K, holder, now)
  end
  local follow = K.followups and redis.call('HGET', K.followups, field)
  if not follow then
    return holder, info, reason, nil
  end
  local finfo, freason = dk_pending(K, follow, now)
  if info then
    if finfo then
      return holder, info, reason, follow
    end
    -- The follow-up was cancelled or vanished; the holder goes on.
    if write then
      redis.call('HDEL', K.followups, field)
    end
    return holder, info, reason, nil
  end
  -- The holder is over: its follow-up comes next and takes the slot, whether it still
  -- waits, runs, or has run too (it is then the key's last run).
  if write then
    if holder then
      dk_remember(K, field, holder, reason, enqueued_at, now)
    end
    if finfo and finfo[1] == 'deferred' then
      dk_release(K, follow, holder, enqueued_at)
      finfo = dk_pending(K, follow, now)
    end
    redis.call('HSET', K.slots, field, follow)
    redis.call('HDEL', K.followups, field)
  end
  if finfo then
    return follow, finfo, nil, nil
  end
  return follow, nil, freason, nil
end

-- Called when a queued job without a live lease is in neither the queue nor the
-- intermediate list: mark it (see dk_lost).
local function dk_adrift(K, job_id, info, now, margin)
  local job_key = K.job_prefix .. job_id
  local mark = redis.call('HGET', job_key, DK_ADRIFT)
  if not mark or string.sub(mark, 1, #info[2] + 1) ~= info[2] .. '|' then
    redis.call('HSET', job_key, DK_ADRIFT, info[2] .. '|' .. (now + margin))
  end
end

local function dk_withdraw(K, job_id, info, now, due_margin)
  local status = info[1]
  if status == 'started' then
    return 'running'
  elseif status == 'queued' then
    -- An id in the intermediate list belongs to a worker, or to RQ's maintenance, which
    -- fails or retries it whatever its status says: a withdrawn job would be revived
    -- (seen by the step matrix, retry k=80: RQ's cleanup had re-queued it while the id
    -- was still in the intermediate list). Leave it; and look there before the LREM.
    if dk_in_list(K.intermediate, job_id) then
      return 'dequeued'
    end
    if redis.call('LREM', K.queue, 1, job_id) == 0 then
      dk_adrift(K, job_id, info, now, due_margin)
      return 'dequeued'
    end
  elseif status == 'scheduled' then
    if tonumber(info[4]) <= now + due_margin then
      return 'due'
    end
    redis.call('ZREM', K.scheduled, job_id)
  elseif status == 'ready_to_enqueue' then
    -- RQ 3 is moving it onto the queue (its WATCHed ReadyJobRegistry.enqueue_jobs): like
    -- a just-dequeued job, it is about to run.
    return 'ready'
  elseif status == 'rate_limited' then
    -- What RQ 3's Job.cancel does for a waiting rate-limited job: out of the waiting
    -- zset (RateLimitRegistry.cancel). It held no slot of the limit, so none is freed.
    -- RQ's promotion is a script too: it cannot interleave with this one.
    local rl_key = redis.call('HGET', K.job_prefix .. job_id, 'rate_limit_key')
    if rl_key and K.rate_limited and K.rate_limited ~= '' then
      redis.call('ZREM', string.format(K.rate_limited, rl_key), job_id)
    end
  elseif status == 'deferred' then
    redis.call('ZREM', K.deferred, job_id)
    local parent = redis.call('HGET', K.job_prefix .. job_id, 'dependency_id')
    if parent then
      redis.call('SREM', string.format(K.dependents, parent), job_id)
    end
  end
  redis.call('HSET', K.job_prefix .. job_id, 'status', 'canceled')
  redis.call('ZADD', K.canceled, now, job_id)
  return 'cancelled'
end
