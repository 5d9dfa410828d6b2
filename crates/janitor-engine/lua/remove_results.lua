-- Removes result keys whose value is still exactly what was classified (compare-and-delete),
-- archiving each with its remaining TTL.
--
-- KEYS[1]: the archive stream   KEYS[2]: the janitor lock   KEYS[3..]: result keys
-- ARGV[1]: janitor lock token   ARGV[2]: archive MAXLEN
-- ARGV[3+2i], ARGV[4+2i]: exact value and archive metadata (JSON) of KEYS[3+i]
-- Returns two results per key: archive id (or false when the key is gone, changed or not a
-- string) and its PTTL when removed.
redis.replicate_commands()
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return redis.error_reply('LOCKLOST celery-janitor lock is not held by this run')
end
local results = {}
for k = 3, #KEYS do
  local i = 3 + (k - 3) * 2
  local ok, current = pcall(redis.call, 'GET', KEYS[k])
  if ok and current == ARGV[i] then
    local pttl = redis.call('PTTL', KEYS[k])
    redis.call('DEL', KEYS[k])
    results[#results + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*',
      'kind', 'result', 'key', KEYS[k], 'pttl', pttl, 'value', ARGV[i], 'meta', ARGV[i + 1])
    results[#results + 1] = pttl
  else
    results[#results + 1] = false
    results[#results + 1] = 0
  end
end
return results
