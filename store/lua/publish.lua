-- Publish one batch atomically: certificates, index lines, refusals, replies and audit lines.
-- A job already published by an earlier delivery is skipped, its reply included, so a job
-- signed twice is published and answered once.
-- KEYS: serials, certs, index, index:order, pending, audit, audit:head, owners, [reply list].
-- The caller cuts a large batch into several calls (store.jobs PUBLISH_CHUNK), so that no call
-- holds Redis long; each job is whole in one call.
-- ARGV: the job key stem (`P:job:`), reply TTL seconds, reply list length cap, job record
--   retention seconds (0: kept for ever), issued count, refusal count, count of other replies, the other replies' JSON (pushed first), then 7 values per issued job (job
--   id, serial, PEM, index line, fingerprint, audit line, owner or ''), 4 per refusal (job id,
--   fingerprint, code, message), then further audit lines.
-- Returns per issued job 1 (published), 0 (published before) or -1 (its serial is another's).
local serials, certs, index, order, pending = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local audit_log, audit_head = KEYS[6], KEYS[7]
local job_stem, ttl, cap, retention = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local issued_count, refusal_count = tonumber(ARGV[5]), tonumber(ARGV[6])
local other_count = tonumber(ARGV[7])
local owners, reply_key = KEYS[8], KEYS[9]
local out, audit = {}, {}

if reply_key then
  -- In slices: unpack is bounded by Lua's C stack (8,000 values).
  for first = 8, 7 + other_count, 1000 do
    redis.call('RPUSH', reply_key, unpack(ARGV, first, math.min(first + 999, 7 + other_count)))
  end
end
local a = 8 + other_count
for n = 1, issued_count do
  local job_id, serial, pem, line, fingerprint = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local key = job_stem .. job_id
  local owner = redis.call('HGET', serials, serial)
  if redis.call('HGET', key, 'state') == 'issued' then
    out[n] = 0
  elseif owner and owner ~= job_id then
    out[n] = -1
  else
    redis.call('HSET', serials, serial, job_id)
    redis.call('HSET', key, 'state', 'issued', 'serial', serial, 'fingerprint', fingerprint)
    if ARGV[a + 6] ~= '' then
      redis.call('HSET', key, 'owner', ARGV[a + 6])
      redis.call('HSET', owners, serial, ARGV[a + 6])  -- kept when the job record expires
    end
    redis.call('HDEL', key, 'record', 'holder')
    if retention > 0 then redis.call('EXPIRE', key, retention) end
    redis.call('HSET', certs, serial, pem)
    redis.call('HSET', index, serial, line)
    redis.call('RPUSH', order, serial)
    redis.call('SREM', pending, job_id)
    if reply_key then
      redis.call('RPUSH', reply_key, cjson.encode({schema_version = 1, job_id = job_id,
        status = 'issued', serial = serial, certificate_pem = pem, fingerprint = fingerprint}))
    end
    audit[#audit + 1] = ARGV[a + 5]
    out[n] = 1
  end
  a = a + 7
end
for _ = 1, refusal_count do
  local key = job_stem .. ARGV[a]
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'state', 'refused', 'fingerprint', ARGV[a + 1], 'code', ARGV[a + 2],
               'message', ARGV[a + 3])
    if retention > 0 then redis.call('EXPIRE', key, retention) end
  end
  a = a + 4
end
for i = a, #ARGV do audit[#audit + 1] = ARGV[i] end
append_audit(audit_log, audit_head, audit)
if reply_key then bound_reply_list(reply_key, ttl, cap) end
return out
