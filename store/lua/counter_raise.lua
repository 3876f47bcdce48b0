-- Raise a counter to at least ARGV[1] (adoption of a folder whose crlnumber is ahead).
-- KEYS: the counter. Returns its value after.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('GET', KEYS[1])
