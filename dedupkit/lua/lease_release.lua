-- lease_release.lua: give the scheduler's leader lease up, only if this replica holds it.
--
-- KEYS[1]  lease            <ns>:scheduler:<q>:<name>:leader, value = the holder's token
-- ARGV[1]  token            this replica's token
-- Reply: 1 released, 0 not ours

local lease_key, token = KEYS[1], ARGV[1]
if redis.call('GET', lease_key) == token then
  return redis.call('DEL', lease_key)
end
return 0
