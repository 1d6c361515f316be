"""An atomic snapshot of what RQ would still run, per dedup key (test-only Lua, read-only).

Read in one script so a job moving between RQ's lists and registries is never seen twice
or missed; decided from RQ's keys alone, never from dedupkit's slots.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import redis
from rq import Queue

from dedupkit.keys import decode_key

SNAPSHOT = """
local queue_key, intermediate_key, scheduled_key, wip_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
local function add_if_exists(id)
  if redis.call('EXISTS', job_prefix .. id) == 1 then out[#out + 1] = id end
end
for _, id in ipairs(redis.call('LRANGE', queue_key, 0, -1)) do add_if_exists(id) end
for _, id in ipairs(redis.call('LRANGE', intermediate_key, 0, -1)) do add_if_exists(id) end
for _, id in ipairs(redis.call('ZRANGE', scheduled_key, 0, -1)) do add_if_exists(id) end
local wip = redis.call('ZRANGE', wip_key, 0, -1, 'WITHSCORES')
for i = 1, #wip, 2 do
  local id = string.match(wip[i], '^([^:]+):')
  local score = wip[i + 1]
  if id and (score == 'inf' or tonumber(score) > now)
     and redis.call('HGET', job_prefix .. id, 'status') == 'started' then
    out[#out + 1] = id
  end
end
return out
"""


def dedupkit_key_of(job_id: str) -> str:
    """The dedup key inside a dedupkit job id, ``<prefix>_<encoded key>_<micros>``."""
    return decode_key(job_id.rsplit("_", 2)[-2])


def runnable_by_key(conn: redis.Redis, queue: Queue,
                    key_of: Callable[[str], str] = dedupkit_key_of) -> dict[str, set[str]]:
    ids = conn.eval(SNAPSHOT, 4, queue.key, queue.intermediate_queue_key, queue.scheduled_job_registry.key,
                    queue.started_job_registry.key, queue.job_class.redis_job_namespace_prefix)
    out: dict[str, set[str]] = defaultdict(set)
    for raw in ids:
        job_id = raw.decode()
        out[key_of(job_id)].add(job_id)
    return out


def violations(conn: redis.Redis, queue: Queue,
               key_of: Callable[[str], str] = dedupkit_key_of) -> dict[str, set[str]]:
    return {k: v for k, v in runnable_by_key(conn, queue, key_of).items() if len(v) > 1}
