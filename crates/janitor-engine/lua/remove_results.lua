-- Removes result keys whose value is still exactly what was classified (compare-and-delete),
-- archiving each with its remaining TTL.
--
-- KEYS[1]: the archive stream   KEYS[2]: the janitor lock   KEYS[3..]: result keys
-- ARGV[1]: janitor lock token   ARGV[2]: archive MAXLEN
-- ARGV[3+2i], ARGV[4+2i]: spec of the exact value (`sha1:length:locator`, see checks.lua) and
--   archive metadata (JSON) of KEYS[3+i]
-- Errors (nothing written): CJWRONGTYPE, CJBADARG, LOCKLOST, CJARCHIVE (see checks.lua).
-- Returns two results per key: {archive id, the exact value removed} (or false when the key is
-- gone, changed or not a string) and its PTTL when removed.
redis.replicate_commands()
local failed = cj_check(function()
  cj_groups(2, 2)
  if (#ARGV - 2) / 2 ~= #KEYS - 2 then
    error('CJBADARG 0 expected a value and metadata per result key', 0)
  end
  cj_lock(2, ARGV[1])
  cj_expect(1, {'stream'})
  cj_number(2, true)
  for i = 3, #ARGV, 2 do
    cj_spec(i)
  end
end)
if failed then
  return failed
end

local results, doomed, items = {}, {}, {}
for k = 3, #KEYS do
  local i = 3 + (k - 3) * 2
  -- A key that is no longer a string is not the result that was classified: left alone.
  local value = redis.call('TYPE', KEYS[k])['ok'] == 'string' and redis.call('GET', KEYS[k])
  if value and cj_is(value, cj_spec(i)) then
    local pttl = redis.call('PTTL', KEYS[k])
    doomed[#doomed + 1] = {k, #results + 1, value}
    items[#items + 1] = {'kind', 'result', 'key', KEYS[k], 'pttl', pttl, 'value', value,
      'meta', ARGV[i + 1]}
    results[#results + 1] = false
    results[#results + 1] = pttl
  else
    results[#results + 1] = false
    results[#results + 1] = 0
  end
end

if #doomed > 0 then
  -- Archive first: if that fails, nothing has been written (see checks.lua).
  local ids, err = cj_archive_all(1, ARGV[2], items)
  if err then
    return err
  end
  for n, d in ipairs(doomed) do
    redis.call('DEL', KEYS[d[1]])
    results[d[2]] = {ids[n], d[3]}
  end
end
return results
