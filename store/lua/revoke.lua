-- Compare-and-set of one index line to its revoked form, with its audit line: the line is
-- rebuilt in Python (core.index formats it) and written only if nobody changed it since.
-- KEYS: index, revoked, audit, audit:head, [revocation:{request id}].
-- ARGV: serial hex, the line read, the revoked line, the audit line, request memory seconds.
-- Returns 1 when revoked, 0 when the line had changed.
local index, revoked, audit_log, audit_head, request = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local serial, expected, line, event, memory = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('HGET', index, serial) ~= expected then return 0 end
redis.call('HSET', index, serial, line)
redis.call('HSET', revoked, serial, line)
append_audit(audit_log, audit_head, {event})
if request then
  redis.call('SET', request, serial, 'EX', memory)
end
return 1
