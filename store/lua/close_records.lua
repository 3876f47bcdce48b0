-- Close jobs whose stored record the signer refuses to sign (no signers' MAC, or no longer
-- admissible): a reserved job becomes `refused` with the code and message, and in any state
-- the record goes and the job leaves `pending`, so neither recovery nor a later delivery signs
-- it. A job whose record changed since it was read is left as it is.
-- KEYS: pending.
-- ARGV: the job key stem (`P:job:`), job record retention seconds (0: kept for ever), then 4
-- per job: job id, the record as read ('' for none),
-- code, message.
-- Returns per job 1 when this call closed it, else 0.
local pending, job_stem, retention = KEYS[1], ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 4 do
  local job_id = ARGV[i]
  local key = job_stem .. job_id
  if (redis.call('HGET', key, 'record') or '') == ARGV[i + 1] then
    if redis.call('HGET', key, 'state') == 'reserved' then
      redis.call('HSET', key, 'state', 'refused', 'code', ARGV[i + 2], 'message', ARGV[i + 3])
    end
    close_job(key, pending, job_id, retention)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
