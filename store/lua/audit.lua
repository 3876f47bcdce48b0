-- The audit log's one append routine (core.audit describes the chain): entry i is stored as
-- `H_i JSON_i` with H_i = SHA-1(H_{i-1} .. '\n' .. JSON_i) and H_0 = 40 zeros; the newest hash
-- is kept at head_key. store/scripts.py puts this file in front of every script that records a
-- decision (publish.lua, revoke.lua), so the entry is chained in the step that makes it.
local function append_audit(log_key, head_key, entries)
  if #entries == 0 then return end
  local head = redis.call('GET', head_key) or string.rep('0', 40)
  for _, entry in ipairs(entries) do
    head = redis.sha1hex(head .. '\n' .. entry)
    redis.call('RPUSH', log_key, head .. ' ' .. entry)
  end
  redis.call('SET', head_key, head)
end
