-- _common.lua: helpers shared by every dedupkit script; Python prepends this file to
-- admit.lua, status.lua and cancel.lua when it loads them. It reads no KEYS or ARGV: each
-- script passes its keys in a table K = {slots, followups, last, queue, scheduled,
-- started, deferred, canceled, job_prefix, exec_prefix, dependents} (entries a script does
-- not need are nil; 'dependents' is RQ's string.format template of a job's dependents set;
-- 'last' is the hash of each key's last run, "<job id>|<final status>|<ended at>").
--
-- dk_now()        Redis server time, epoch seconds (float). The scripts trust this clock
--                 only: one clock for every client, so a client whose clock is off can
--                 neither free nor block a slot.
-- dk_inspect(K, job_id, now)
--   -> nil, reason  when the job no longer holds its slot; reason is 'gone' (hash gone, a
--                   bare heartbeat hash, or 'scheduled' with no entry in the scheduled
--                   registry), 'ended' (finished/failed/stopped/canceled/created) or
--                   'dead' (started, but every RQ execution lease has expired)
--   -> {rq_status, enqueued_at, started_at, scheduled_for}  when it is pending
-- dk_resolve(K, field, now, write)
--   -> holder_id, info, reason, follow_id   the slot's pending job (info nil when free),
--      and a waiting follow-up. When the holder is over, its follow-up becomes the holder
--      (written only when write is true), pending or, if it has run too, as the last run.
-- dk_remember(K, field, job_id, reason, now_text)
--   record a holder that is over as the key's last run (status 'dead' when its worker
--   died, 'gone' when its hash vanished; ended at: RQ's ended_at, else now_text)
-- dk_withdraw(K, job_id, info, now, due_margin)
--   -> 'cancelled' | 'running' | 'dequeued' | 'due'   take a pending job out of RQ as
--      RQ's Job.cancel does (status 'canceled', canceled registry), when that is safe.

local function dk_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- A started job is alive while one of its executions holds a lease in rq:wip:<q> that
-- has not expired. RQ's heartbeat pushes that score to now + ttl every
-- job_monitoring_interval; a SIGKILLed worker stops pushing it. O(1): a job has one
-- live execution (we look at the 4 newest), each checked with one ZSCORE.
local function dk_lease_alive(K, job_id, now)
  local execs = redis.call('ZREVRANGE', K.exec_prefix .. job_id, 0, 3)
  for _, exec_id in ipairs(execs) do
    local score = redis.call('ZSCORE', K.started, job_id .. ':' .. exec_id)
    if score then
      if score == 'inf' or score == '+inf' then
        return true
      end
      local n = tonumber(score)
      if n and n > now then
        return true
      end
    end
  end
  return false
end

local DK_PENDING = { queued = true, scheduled = true, deferred = true }

local function dk_inspect(K, job_id, now)
  -- 'origin' is written with every job; a hash without it is a heartbeat ghost (rq#1450).
  local f = redis.call('HMGET', K.job_prefix .. job_id, 'status', 'origin', 'enqueued_at', 'started_at')
  local status = f[1]
  if not status or not f[2] then
    return nil, 'gone'
  end
  if status == 'started' then
    if not dk_lease_alive(K, job_id, now) then
      return nil, 'dead'
    end
  elseif not DK_PENDING[status] then
    return nil, 'ended'
  end
  local scheduled_for = ''
  if status == 'scheduled' then
    scheduled_for = redis.call('ZSCORE', K.scheduled, job_id)
    if not scheduled_for then
      -- RQ moves a job out of the scheduled registry and changes its status in one
      -- MULTI; 'scheduled' with no registry entry is an orphan nothing will ever run.
      return nil, 'gone'
    end
  end
  return { status, f[3] or '', f[4] or '', scheduled_for }, nil
end

-- RQ enqueues a deferred job when the job it depends on ends. When that job died with
-- its worker (RQ would wait for its 10-minute maintenance) or its worker died between
-- marking it failed and enqueueing dependents, do what enqueue_dependents does. RQ's own
-- enqueue_dependents WATCHes the dependents set we change, so it cannot enqueue it twice.
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

local function dk_remember(K, field, job_id, reason, now_text)
  if not K.last then
    return
  end
  local f = redis.call('HMGET', K.job_prefix .. job_id, 'status', 'ended_at')
  local status = f[1] or 'gone'
  if reason == 'dead' or reason == 'gone' then
    status = reason
  end
  local ended = f[2]
  if not ended or ended == '' then
    ended = now_text
  end
  redis.call('HSET', K.last, field, job_id .. '|' .. status .. '|' .. ended)
end

local function dk_resolve(K, field, now, write, enqueued_at)
  local holder = redis.call('HGET', K.slots, field)
  local info, reason = nil, nil
  if holder then
    info, reason = dk_inspect(K, holder, now)
  end
  local follow = K.followups and redis.call('HGET', K.followups, field)
  if not follow then
    return holder, info, reason, nil
  end
  local finfo, freason = dk_inspect(K, follow, now)
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
      dk_remember(K, field, holder, reason, enqueued_at)
    end
    if finfo and finfo[1] == 'deferred' then
      dk_release(K, follow, holder, enqueued_at)
      finfo = dk_inspect(K, follow, now)
    end
    redis.call('HSET', K.slots, field, follow)
    redis.call('HDEL', K.followups, field)
  end
  if finfo then
    return follow, finfo, nil, nil
  end
  return follow, nil, freason, nil
end

local function dk_withdraw(K, job_id, info, now, due_margin)
  local status = info[1]
  if status == 'started' then
    return 'running'
  elseif status == 'queued' then
    if redis.call('LREM', K.queue, 1, job_id) == 0 then
      return 'dequeued'
    end
  elseif status == 'scheduled' then
    if tonumber(info[4]) <= now + due_margin then
      return 'due'
    end
    redis.call('ZREM', K.scheduled, job_id)
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
