-- Record each job before it is signed: its serial (HSETNX, never reused), its TBS record and
-- its holder (the worker process whose lease covers it). A job already known is answered with
-- what the store holds about it instead; one still reserved under another process's live
-- lease is left to that process.
-- KEYS: serials, pending, certs.
-- ARGV: the job key stem (`P:job:`), the lease key stem (`P:lease:`), the holder's id ('' for
--   none: an unleased caller, whose reservations any recovery may take), the lease in
--   milliseconds (set on the holder's lease key here, so no reservation outlives its lease
--   unannounced), then 4 per job: job id, request fingerprint, serial hex, record JSON.
-- Returns per job {'reserved'}, {'serial_taken'}, {'leased'} (another live process holds it),
-- or {state, fingerprint, record, serial, code, message, certificate PEM or false}; a job
-- returned as 'reserved' with its record (an earlier delivery's) now has this caller as holder.
local serials, pending, certs = KEYS[1], KEYS[2], KEYS[3]
local job_stem, lease_stem, holder, lease_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if holder ~= '' then
  redis.call('SET', lease_stem .. holder, holder, 'PX', lease_ms)
end
local out = {}
for i = 5, #ARGV, 4 do
  local job_id, fingerprint, serial, record = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key, n = job_stem .. job_id, #out + 1
  local state = redis.call('HGET', key, 'state')
  local held_by = state == 'reserved' and redis.call('HGET', key, 'holder') or false
  if held_by and held_by ~= '' and held_by ~= holder
      and redis.call('EXISTS', lease_stem .. held_by) == 1 then
    out[n] = {'leased'}
  elseif state then
    if state == 'reserved' then
      if holder ~= '' then redis.call('HSET', key, 'holder', holder)
      else redis.call('HDEL', key, 'holder') end
    end
    local f = redis.call('HMGET', key, 'fingerprint', 'record', 'serial', 'code', 'message')
    local pem = false
    if state == 'issued' then pem = redis.call('HGET', certs, f[3]) end
    out[n] = {state, f[1], f[2], f[3], f[4], f[5], pem}
  elseif redis.call('HSETNX', serials, serial, job_id) == 0 then
    out[n] = {'serial_taken'}
  else
    redis.call('HSET', key, 'state', 'reserved', 'fingerprint', fingerprint, 'serial', serial,
               'record', record)
    if holder ~= '' then redis.call('HSET', key, 'holder', holder) end
    redis.call('SADD', pending, job_id)
    out[n] = {'reserved'}
  end
end
return out
