-- Take over reserved jobs whose holder's lease is gone (the process died, or never had one):
-- each becomes this caller's, so no other recovery takes it while this one signs it. The
-- caller's own jobs are not taken: they belong to a batch it is signing.
-- KEYS: pending.
-- ARGV: the job key stem (`P:job:`), the lease key stem (`P:lease:`), the caller's id ('' for
--   none), the lease in milliseconds (set on the caller's lease key), the most jobs to take.
-- Returns a flat list: job id, record, job id, record, ... of the jobs taken.
local pending = KEYS[1]
local job_stem, lease_stem, holder, lease_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local limit = tonumber(ARGV[5])
if holder ~= '' then
  redis.call('SET', lease_stem .. holder, holder, 'PX', lease_ms)
end
local out = {}
for _, job_id in ipairs(redis.call('SMEMBERS', pending)) do
  if #out >= 2 * limit then break end
  local key = job_stem .. job_id
  local f = redis.call('HMGET', key, 'state', 'holder', 'record')
  local held_by = f[2]
  local live = held_by and held_by ~= ''
    and (held_by == holder or redis.call('EXISTS', lease_stem .. held_by) == 1)
  if f[1] == 'reserved' and f[3] and not live then
    if holder ~= '' then redis.call('HSET', key, 'holder', holder)
    else redis.call('HDEL', key, 'holder') end
    out[#out + 1] = job_id
    out[#out + 1] = f[3]
  end
end
return out
