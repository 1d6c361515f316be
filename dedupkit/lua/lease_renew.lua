-- lease_renew.lua: renew the scheduler's leader lease, only if this replica holds it.
--
-- KEYS[1]  lease            <ns>:scheduler:<q>:<name>:leader, value = the holder's token
-- ARGV[1]  token            this replica's token
-- ARGV[2]  lease_ms         milliseconds
-- Reply: 1 renewed, 0 not ours (another replica leads, or the lease expired)

local lease_key, token, ttl_ms = KEYS[1], ARGV[1], ARGV[2]
if redis.call('GET', lease_key) == token then
  redis.call('PEXPIRE', lease_key, ttl_ms)
  return 1
end
return 0
