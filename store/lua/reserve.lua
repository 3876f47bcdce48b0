-- Record each job before it is signed: its serial (HSETNX, never reused) and its TBS record.
-- A job already known is answered with what the store holds about it instead.
-- KEYS: serials, pending, certs.
-- ARGV: the job key stem (`P:job:`), then 4 per job: job id, request fingerprint, serial hex,
--   record JSON.
-- Returns per job {'reserved'}, {'serial_taken'}, or {state, fingerprint, record, serial,
-- code, message, certificate PEM or false}.
local serials, pending, certs = KEYS[1], KEYS[2], KEYS[3]
local job_stem = ARGV[1]
local out = {}
for i = 2, #ARGV, 4 do
  local job_id, fingerprint, serial, record = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local key, n = job_stem .. job_id, #out + 1
  local state = redis.call('HGET', key, 'state')
  if state then
    local f = redis.call('HMGET', key, 'fingerprint', 'record', 'serial', 'code', 'message')
    local pem = false
    if state == 'issued' then pem = redis.call('HGET', certs, f[3]) end
    out[n] = {state, f[1], f[2], f[3], f[4], f[5], pem}
  elseif redis.call('HSETNX', serials, serial, job_id) == 0 then
    out[n] = {'serial_taken'}
  else
    redis.call('HSET', key, 'state', 'reserved', 'fingerprint', fingerprint, 'serial', serial,
               'record', record)
    redis.call('SADD', pending, job_id)
    out[n] = {'reserved'}
  end
end
return out
