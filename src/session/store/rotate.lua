-- Refresh-token rotation (README, How rotation works), atomic because Redis
-- runs a script alone.
--
-- KEYS[1]  session hash: user, client, attrs, created, exp, cur, prev, prev_until, succ
-- ARGV     presented_hash, new_hash, sealed_successor, now_ms, grace_ms,
--          refresh_ttl_ms, max_age_ms, parent_hash ('' when the presented
--          token carries none)
--
-- Returns {tag, ...}:
--   {'missing'}
--   {'expired', user}                         session deleted
--   {'theft', user}                           session deleted
--   {'rotated', attrs, created, exp}
--   {'rolled', attrs, created, exp}            the presented token's parent was
--                                             current: a rotation the store lost
--   {'replay', attrs, created, exp, succ}
--   {'corrupt', what}
-- User and client are not returned: the caller has them from the sealed
-- token it presented, which carries them unchanged from the session's
-- creation. The caller removes the handle from the user's index after
-- 'expired' and 'theft' (that key lives in another cluster slot).
--
-- Only the fields a rotation needs are read up front; 'user' is read only
-- when the session is deleted, 'prev', 'prev_until' and 'succ' only when the
-- presented hash is not the current one.
--
-- Times are integers below 2^53, exact as Lua doubles; they are formatted with
-- %d (a C long here) so a value never turns into exponent notation.

local key = KEYS[1]
local presented = ARGV[1]
local now = tonumber(ARGV[4])
local grace = tonumber(ARGV[5])

local f = redis.call('HMGET', key, 'cur', 'attrs', 'created', 'exp')
local cur, attrs = f[1], f[2]
local created, exp = tonumber(f[3]), tonumber(f[4])
if not cur or not attrs or not created or not exp then
  if not cur and not attrs and not f[3] and not f[4]
      and redis.call('EXISTS', key) == 0 then
    return {'missing'}
  end
  return {'corrupt', key}
end

-- Deletes the session; its user, for the caller's index clean-up.
local function drop()
  local user = redis.call('HGET', key, 'user')
  redis.call('DEL', key)
  if user then
    return user
  end
  return nil
end

local max_exp = created + tonumber(ARGV[7])
if now >= exp or now >= max_exp then
  return {'expired', drop()}
end

-- The current token, or the successor of the current token whose rotation
-- this store lost (its parent hash, sealed in it, is current): either way the
-- presented token is the one rotated away.
local parent = ARGV[8]
local rolled = presented ~= cur and parent ~= nil and parent ~= '' and parent == cur
if presented == cur or rolled then
  local new_exp = math.min(now + tonumber(ARGV[6]), max_exp)
  local new_exp_s = string.format('%d', new_exp)
  redis.call('HSET', key,
    'prev', presented,
    'prev_until', string.format('%d', now + grace),
    'succ', ARGV[3],
    'cur', ARGV[2],
    'exp', new_exp_s)
  redis.call('PEXPIRE', key, string.format('%d', math.max(new_exp - now, 1)))
  if rolled then
    return {'rolled', attrs, f[3], new_exp_s}
  end
  return {'rotated', attrs, f[3], new_exp_s}
end

local p = redis.call('HMGET', key, 'prev', 'prev_until', 'succ')
local prev_until = tonumber(p[2])
-- This very request, applied before and sent again after its answer was
-- lost: new_hash is random per request, so only the request that made it
-- current can name it. Answer as the first time; nothing changes.
if p[1] and presented == p[1] and ARGV[2] == cur then
  return {'rotated', attrs, f[3], f[4]}
end
if p[1] and presented == p[1] and grace > 0 and prev_until and now < prev_until then
  return {'replay', attrs, f[3], f[4], p[3] or ''}
end

return {'theft', drop()}
