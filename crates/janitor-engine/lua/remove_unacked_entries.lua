-- Removes exact entries from kombu's `unacked` hash and `unacked_index` zset together, the way
-- kombu's ack does, while this run holds kombu's `unacked_mutex` (so no worker restore sweep
-- can run in between) and the janitor lock.
--
-- KEYS[1]: unacked (hash)      KEYS[2]: unacked_index (zset)   KEYS[3]: unacked_mutex
-- KEYS[4]: the archive stream  KEYS[5]: the janitor lock
-- ARGV[1]: janitor lock token  ARGV[2]: unacked_mutex token   ARGV[3]: archive MAXLEN
-- ARGV[4+3i], ARGV[5+3i], ARGV[6+3i]: delivery tag, exact value, archive metadata (JSON)
-- Returns two results per entry: archive id (or false when the value is gone or changed) and
-- the entry's unacked_index score (or '').
redis.replicate_commands()
if redis.call('GET', KEYS[5]) ~= ARGV[1] then
  return redis.error_reply('LOCKLOST celery-janitor lock is not held by this run')
end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
  return redis.error_reply('MUTEXLOST unacked_mutex is not held by this run')
end
local results = {}
for i = 4, #ARGV, 3 do
  local tag = ARGV[i]
  local want = ARGV[i + 1]
  if redis.call('HGET', KEYS[1], tag) == want then
    local score = redis.call('ZSCORE', KEYS[2], tag)
    redis.call('HDEL', KEYS[1], tag)
    redis.call('ZREM', KEYS[2], tag)
    results[#results + 1] = redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*',
      'kind', 'unacked', 'key', KEYS[1], 'index_key', KEYS[2], 'field', tag,
      'score', score or '', 'value', want, 'meta', ARGV[i + 2])
    results[#results + 1] = score or ''
  else
    results[#results + 1] = false
    results[#results + 1] = ''
  end
end
return results
