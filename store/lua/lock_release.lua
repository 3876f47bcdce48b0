-- Release a lock only if this holder still holds it (it may have expired and passed on).
-- KEYS: the lock. ARGV: the holder's token. Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
