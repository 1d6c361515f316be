-- _common.lua: helpers shared by every dedupkit script; Python prepends this file to
-- admit.lua, status.lua and cancel.lua when it loads them. It reads no KEYS or ARGV.
--
-- dk_now()                      Redis server time, epoch seconds (float). The scripts trust
--                               this clock only: one clock for every client, so a client
--                               whose clock is off cannot free or block a slot.
-- dk_inspect(job_prefix, exec_prefix, wip_key, scheduled_key, job_id, now)
--   -> nil when the job no longer holds its slot (hash gone or a bare heartbeat hash,
--      status finished/failed/stopped/canceled/created, 'scheduled' with no entry in
--      the scheduled registry, or started with every RQ execution lease expired), else {rq_status, enqueued_at, started_at, scheduled_for}
--      (strings; '' when absent; scheduled_for is the scheduled registry score).
--   Also returns a second value, the reason a holder is not pending: 'gone', 'ended'
--   or 'dead'.

local function dk_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- A started job is alive while one of its executions holds a lease in rq:wip:<q> that
-- has not expired. RQ's heartbeat pushes that score to now + ttl every
-- job_monitoring_interval; a SIGKILLed worker stops pushing it. O(1): a job has one
-- live execution (we look at the 4 newest), each checked with one ZSCORE.
local function dk_lease_alive(exec_prefix, wip_key, job_id, now)
  local execs = redis.call('ZREVRANGE', exec_prefix .. job_id, 0, 3)
  for _, exec_id in ipairs(execs) do
    local score = redis.call('ZSCORE', wip_key, job_id .. ':' .. exec_id)
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

local function dk_inspect(job_prefix, exec_prefix, wip_key, scheduled_key, job_id, now)
  -- 'origin' is written with every job; a hash without it is a heartbeat ghost (rq#1450).
  local f = redis.call('HMGET', job_prefix .. job_id, 'status', 'origin', 'enqueued_at', 'started_at')
  local status = f[1]
  if not status or not f[2] then
    return nil, 'gone'
  end
  if status == 'started' then
    if not dk_lease_alive(exec_prefix, wip_key, job_id, now) then
      return nil, 'dead'
    end
  elseif not DK_PENDING[status] then
    return nil, 'ended'
  end
  local scheduled_for = ''
  if status == 'scheduled' then
    scheduled_for = redis.call('ZSCORE', scheduled_key, job_id)
    if not scheduled_for then
      -- RQ moves a job out of the scheduled registry and changes its status in one
      -- MULTI; 'scheduled' with no registry entry is an orphan nothing will ever run.
      return nil, 'gone'
    end
  end
  return { status, f[3] or '', f[4] or '', scheduled_for }, nil
end
