-- Puts one archived entry back where it was, once. The archive id is recorded in a set so a
-- second restore (from the stream or from an archive file) is a no-op.
--
-- KEYS[1]: the archive stream   KEYS[2]: the restored-ids set   KEYS[3]: target key
-- KEYS[4]: unacked_index (only for kind "unacked"; otherwise any key name)
-- ARGV[1]: archive id  ARGV[2]: kind ("queue" | "unacked" | "result")  ARGV[3]: exact value
-- ARGV[4]: unacked field (delivery tag)   ARGV[5]: unacked score   ARGV[6]: result PTTL (ms, or -1)
-- ARGV[7]: seconds to keep the restored-ids set
-- Returns 1 restored, 0 already restored, -1 the target is occupied (left untouched).
redis.replicate_commands()
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 0
end
local kind = ARGV[2]
if kind == 'queue' then
  -- kombu restores to the consume end (RPUSH); so do we.
  redis.call('RPUSH', KEYS[3], ARGV[3])
elseif kind == 'unacked' then
  if redis.call('HSETNX', KEYS[3], ARGV[4], ARGV[3]) == 0 then
    return -1
  end
  if ARGV[5] ~= '' then
    redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
  end
elseif kind == 'result' then
  local pttl = tonumber(ARGV[6])
  local ok
  if pttl and pttl > 0 then
    ok = redis.call('SET', KEYS[3], ARGV[3], 'PX', pttl, 'NX')
  else
    ok = redis.call('SET', KEYS[3], ARGV[3], 'NX')
  end
  if not ok then
    return -1
  end
else
  return redis.error_reply('unknown archive kind ' .. kind)
end
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[7]))
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
