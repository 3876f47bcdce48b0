-- End a lease whose holder is known to be gone (a process on the same host that no longer
-- runs), only if it is still that holder's. KEYS: the lease. ARGV: the holder's id.
-- Returns 1 when ended.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
