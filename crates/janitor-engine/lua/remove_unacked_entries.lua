-- Removes exact entries from kombu's `unacked` hash and `unacked_index` zset together, the way
-- kombu's ack does, while this run holds kombu's `unacked_mutex` (so no worker restore sweep
-- can run in between) and the janitor lock.
--
-- KEYS[1]: unacked (hash)      KEYS[2]: unacked_index (zset)   KEYS[3]: unacked_mutex
-- KEYS[4]: the archive stream  KEYS[5]: the janitor lock
-- ARGV[1]: janitor lock token  ARGV[2]: unacked_mutex token   ARGV[3]: archive MAXLEN
-- ARGV[4+3i], ARGV[5+3i], ARGV[6+3i]: delivery tag, spec of the exact value
--   (`sha1:length:locator`, see checks.lua), archive metadata (JSON)
-- Errors (nothing written): CJWRONGTYPE, CJBADARG, LOCKLOST, MUTEXLOST, CJARCHIVE.
-- Returns two results per entry: {archive id, the exact value removed} (or false when the value
-- is gone or changed) and the entry's unacked_index score (or '').
redis.replicate_commands()
local failed = cj_check(function()
  cj_groups(3, 3)
  cj_lock(5, ARGV[1])
  cj_expect(1, {'hash'})
  cj_expect(2, {'zset'})
  cj_expect(3, {'string'})
  cj_expect(4, {'stream'})
  cj_number(3, true)
  for i = 5, #ARGV, 3 do
    cj_spec(i)
  end
  if redis.call('GET', KEYS[3]) ~= ARGV[2] then
    error('MUTEXLOST unacked_mutex is not held by this run', 0)
  end
end)
if failed then
  return failed
end

local results, doomed, items = {}, {}, {}
for i = 4, #ARGV, 3 do
  local tag = ARGV[i]
  local value = redis.call('HGET', KEYS[1], tag)
  if cj_is(value, cj_spec(i + 1)) then
    local score = redis.call('ZSCORE', KEYS[2], tag) or ''
    doomed[#doomed + 1] = {tag, #results + 1, value}
    items[#items + 1] = {'kind', 'unacked', 'key', KEYS[1], 'index_key', KEYS[2], 'field', tag,
      'score', score, 'value', value, 'meta', ARGV[i + 2]}
    results[#results + 1] = false
    results[#results + 1] = score
  else
    results[#results + 1] = false
    results[#results + 1] = ''
  end
end

if #doomed > 0 then
  -- Archive first: if that fails, nothing has been written (see checks.lua).
  local ids, err = cj_archive_all(4, ARGV[3], items)
  if err then
    return err
  end
  for n, d in ipairs(doomed) do
    redis.call('HDEL', KEYS[1], d[1])
    redis.call('ZREM', KEYS[2], d[1])
    results[d[2]] = {ids[n], d[3]}
  end
end
return results
