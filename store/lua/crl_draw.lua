-- Draw the next CRL number and read the revoked set in one step, so that a CRL numbered n
-- lists every revocation whose script ran before n was drawn (RFC 5280 5.2.3; two CRL runs
-- racing can then never publish a higher number that misses a revocation).
-- KEYS: crl:number, revoked. Returns {number, line, line, ...}.
local number = redis.call('INCR', KEYS[1])
local lines = redis.call('HVALS', KEYS[2])
table.insert(lines, 1, number)
return lines
