-- Opens a session by adoption (README, Putting sis-gateway in front of an
-- existing Sign-in Service) unless the same token was adopted within the
-- window, atomic so that instances adopting one token in parallel converge on
-- one session. Both keys carry the session handle as their hash tag (one
-- cluster slot).
--
-- KEYS[1]  session hash (see rotate.lua)
-- KEYS[2]  adoption record: hash `sealed` (the session's first token,
--          sealed) and `until` (end of the window), expiring with the window
-- ARGV     user, client, attrs, cur, created, exp, ttl_ms, sealed, window_ms,
--          now_ms, max_age_ms
--
-- Returns {'created'}, {'adopted', sealed, user, client, attrs, created, exp}
-- or {'gone'} (adopted within the window, but that session is gone).

local now = tonumber(ARGV[10])
local a = redis.call('HMGET', KEYS[2], 'sealed', 'until')
local sealed, adopted_until = a[1], tonumber(a[2])
if sealed and adopted_until and now < adopted_until then
  local f = redis.call('HMGET', KEYS[1], 'user', 'client', 'attrs', 'created', 'exp')
  local created, exp = tonumber(f[4]), tonumber(f[5])
  if not f[1] or not f[2] or not f[3] or not created or not exp
      or now >= exp or now >= created + tonumber(ARGV[11]) then
    return {'gone'}
  end
  return {'adopted', sealed, f[1], f[2], f[3], f[4], f[5]}
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1],
  'user', ARGV[1],
  'client', ARGV[2],
  'attrs', ARGV[3],
  'cur', ARGV[4],
  'created', ARGV[5],
  'exp', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
local window = tonumber(ARGV[9])
if window > 0 then
  redis.call('HSET', KEYS[2], 'sealed', ARGV[8], 'until', string.format('%d', now + window))
  redis.call('PEXPIRE', KEYS[2], ARGV[9])
end
return {'created'}
