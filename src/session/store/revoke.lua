-- Revoke with a refresh token (README, The sign-in endpoints): the session is
-- deleted whatever the token, and the answer says whether the token was still
-- good. The same classification as rotate.lua, in one atomic step.
--
-- KEYS[1]  session hash (see rotate.lua)
-- ARGV     presented_hash, parent_hash ('' when none), now_ms, grace_ms,
--          max_age_ms
--
-- Returns {tag, user}: 'missing' (no user), 'expired', 'revoked' or 'theft';
-- the caller removes the handle from the user's index.

local key = KEYS[1]
local f = redis.call('HMGET', key, 'user', 'cur', 'created', 'exp', 'prev', 'prev_until')
if redis.call('DEL', key) == 0 then
  return {'missing'}
end
local user, cur = f[1] or '', f[2]
local created, exp = tonumber(f[3]), tonumber(f[4])
local presented, parent = ARGV[1], ARGV[2]
local now, grace = tonumber(ARGV[3]), tonumber(ARGV[4])

if not created or not exp or now >= exp or now >= created + tonumber(ARGV[5]) then
  return {'expired', user}
end
if cur and (presented == cur or (parent ~= '' and parent == cur)) then
  return {'revoked', user}
end
local prev_until = tonumber(f[6])
if f[5] and presented == f[5] and grace > 0 and prev_until and now < prev_until then
  return {'revoked', user}
end
return {'theft', user}
