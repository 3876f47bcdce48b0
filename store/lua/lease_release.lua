-- Give up reserved jobs this holder will not sign after all (its lease lapsed meanwhile): each
-- still held by it loses its holder, so any recovery may take it at once.
-- KEYS: none. ARGV: the job key stem (`P:job:`), the holder's id, then job ids.
-- Returns how many were given up.
local job_stem, holder, released = ARGV[1], ARGV[2], 0
for i = 3, #ARGV do
  local key = job_stem .. ARGV[i]
  if redis.call('HGET', key, 'holder') == holder then
    redis.call('HDEL', key, 'holder')
    released = released + 1
  end
end
return released
