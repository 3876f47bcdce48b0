-- Keep a reply list bounded (a routine other scripts call after pushing to one): at most `cap`
-- entries, the oldest dropped (their jobs stay answerable from their records), and a TTL set
-- once, when the list has none: a push never extends it, so a list nobody reads goes away
-- `ttl` seconds after it was made, however often it is pushed to.
local function bound_reply_list(key, ttl, cap)
  redis.call('LTRIM', key, -cap, -1)
  if redis.call('TTL', key) == -1 then
    redis.call('EXPIRE', key, ttl)
  end
end
