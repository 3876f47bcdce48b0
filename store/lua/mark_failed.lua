-- Close jobs that failed inside the signer (sign or verify) as `failed`: out of `pending`,
-- record dropped, serial kept, so nothing issues them after they are answered `failed`.
-- A job another delivery issued or refused, or one reserved for a different request, is left
-- as it is.
-- KEYS: pending.
-- ARGV: the job key stem (`P:job:`), job record retention seconds (0: kept for ever), then 4
-- per job: job id, fingerprint, code, message.
-- Returns per job 1 when this call closed it, else 0.
local pending, job_stem, retention = KEYS[1], ARGV[1], tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 4 do
  local job_id, fingerprint = ARGV[i], ARGV[i + 1]
  local key = job_stem .. job_id
  local found = redis.call('HMGET', key, 'state', 'fingerprint')
  if not found[1] or (found[1] == 'reserved' and found[2] == fingerprint) then
    redis.call('HSET', key, 'state', 'failed', 'fingerprint', fingerprint, 'code', ARGV[i + 2],
               'message', ARGV[i + 3])
    close_job(key, pending, job_id, retention)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
