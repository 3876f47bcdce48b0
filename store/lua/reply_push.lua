-- Push one result JSON to a reply list, kept bounded (reply_bound.lua).
-- KEYS: the reply list. ARGV: the result JSON, TTL seconds, length cap.
redis.call('RPUSH', KEYS[1], ARGV[1])
bound_reply_list(KEYS[1], ARGV[2], tonumber(ARGV[3]))
return 1
