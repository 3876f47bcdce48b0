-- Let a job's record go (a routine other scripts call once they closed or answered the job):
-- its record and holder are dropped, it leaves `pending`, and a closed job (not reserved)
-- expires `retention` seconds later (0: kept for ever).
local function close_job(key, pending, job_id, retention)
  redis.call('HDEL', key, 'record', 'holder')
  redis.call('SREM', pending, job_id)
  if retention > 0 and redis.call('HGET', key, 'state') ~= 'reserved' then
    redis.call('EXPIRE', key, retention)
  end
end
