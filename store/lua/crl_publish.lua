-- Make a CRL the latest unless a newer one is there already (two workers may race on the
-- schedule). KEYS: crl:latest. ARGV: number, PEM, thisUpdate, nextUpdate. Returns 1 or 0.
local current = tonumber(redis.call('HGET', KEYS[1], 'number') or '-1')
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'number', ARGV[1], 'pem', ARGV[2], 'this_update', ARGV[3],
           'next_update', ARGV[4])
return 1
