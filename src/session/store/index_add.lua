-- Adds a session handle to its user's index and makes sure the index lives at
-- least as long as that session can (never shortens an existing TTL).
--
-- KEYS[1]  user index set
-- ARGV     handle, lifetime_ms
redis.call('SADD', KEYS[1], ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
