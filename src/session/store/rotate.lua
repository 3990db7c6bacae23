-- Refresh-token rotation (SPEC §2), atomic because Redis runs a script alone.
--
-- KEYS[1]  session hash: user, client, attrs, created, exp, cur, prev, prev_until, succ
-- ARGV     presented_hash, new_hash, sealed_successor, now_ms, grace_ms,
--          refresh_ttl_ms, max_age_ms
--
-- Returns {tag, ...}:
--   {'missing'}
--   {'expired', user}                         session deleted
--   {'theft', user}                           session deleted
--   {'rotated', user, client, attrs, created, exp}
--   {'replay', user, client, attrs, created, exp, succ}
--   {'corrupt', what}
-- The caller removes the handle from the user's index after 'expired' and
-- 'theft' (that key lives in another cluster slot).
--
-- Times are integers below 2^53, exact as Lua doubles; they are formatted with
-- %d (a C long here) so a value never turns into exponent notation.

local key = KEYS[1]
local presented = ARGV[1]
local now = tonumber(ARGV[4])
local grace = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local max_age = tonumber(ARGV[7])

-- 'succ' is read only for a replay.
local f = redis.call('HMGET', key, 'user', 'client', 'attrs', 'created', 'exp',
  'cur', 'prev', 'prev_until')
local user, client, attrs = f[1], f[2], f[3]
if not user then
  return {'missing'}
end
local created, exp = tonumber(f[4]), tonumber(f[5])
if not created or not exp or not f[6] or not client or not attrs then
  return {'corrupt', key}
end

local max_exp = created + max_age
if now >= exp or now >= max_exp then
  redis.call('DEL', key)
  return {'expired', user}
end

if presented == f[6] then
  local new_exp = math.min(now + ttl, max_exp)
  local new_exp_s = string.format('%d', new_exp)
  redis.call('HSET', key,
    'prev', f[6],
    'prev_until', string.format('%d', now + grace),
    'succ', ARGV[3],
    'cur', ARGV[2],
    'exp', new_exp_s)
  redis.call('PEXPIRE', key, string.format('%d', math.max(new_exp - now, 1)))
  return {'rotated', user, client, attrs, f[4], new_exp_s}
end

local prev_until = tonumber(f[8])
if f[7] and presented == f[7] and grace > 0 and prev_until and now < prev_until then
  local succ = redis.call('HGET', key, 'succ')
  return {'replay', user, client, attrs, f[4], f[5], succ or ''}
end

redis.call('DEL', key)
return {'theft', user}
