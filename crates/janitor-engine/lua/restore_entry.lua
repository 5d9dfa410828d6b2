-- Puts one archived entry back where it was, once. The archive id is recorded in the run's
-- restored-ids set, so a second restore (from the stream or from an archive file) is a no-op;
-- ids restored by earlier versions are in the global set, which is only read.
--
-- Everything that can fail (key types, argument shapes) is checked before the first write, with
-- the checks shared by every script that writes (`checks.lua`, prepended by redis_io.rs), so a
-- failing call writes nothing. Errors (error replies, nothing written):
--   CJWRONGTYPE <i> <type found> <types expected, |-separated>   KEYS[i] has the wrong type
--   CJBADARG <i> <why>                                           ARGV[i] is malformed (0: counts)
--
-- KEYS[1]: the archive stream   KEYS[2]: the global restored-ids set (earlier versions)
-- KEYS[3]: target key   KEYS[4]: unacked_index (only for kind "unacked"; otherwise any key name)
-- KEYS[5]: this run's restored-ids set
-- ARGV[1]: archive id  ARGV[2]: kind ("queue" | "unacked" | "result")  ARGV[3]: exact value
-- ARGV[4]: unacked field (delivery tag)   ARGV[5]: unacked score   ARGV[6]: result PTTL (ms, or -1)
-- ARGV[7]: seconds to keep the restored-ids set
-- Returns 1 restored, 0 already restored, -1 the target is occupied (left untouched).
redis.replicate_commands()
local kind, keep, pttl = ARGV[2], nil, nil
local failed = cj_check(function()
  -- Argument shapes.
  if #KEYS ~= 5 or #ARGV ~= 7 then
    error('CJBADARG 0 expected 5 keys and 7 arguments, got ' .. #KEYS .. ' and ' .. #ARGV, 0)
  end
  if ARGV[1] == '' then
    error('CJBADARG 1 empty archive id', 0)
  end
  if kind ~= 'queue' and kind ~= 'unacked' and kind ~= 'result' then
    error('CJBADARG 2 unknown archive kind ' .. kind, 0)
  end
  keep = cj_number(7, true)
  if keep <= 0 then
    error('CJBADARG 7 not a positive number of seconds', 0)
  end
  if kind == 'unacked' then
    if ARGV[4] == '' then
      error('CJBADARG 4 empty unacked field', 0)
    end
    if ARGV[5] ~= '' then
      cj_number(5)
    end
  elseif kind == 'result' then
    pttl = cj_number(6, true)
  end
  -- Key types: the bookkeeping keys, then the target.
  cj_expect(1, {'stream'})
  cj_expect(2, {'set'})
  cj_expect(5, {'set'})
  if kind == 'queue' then
    cj_expect(3, {'list'})
  elseif kind == 'unacked' then
    cj_expect(3, {'hash'})
    if ARGV[5] ~= '' then
      cj_expect(4, {'zset'})
    end
  else
    cj_expect(3, {'string'})
  end
end)
if failed then
  return failed
end

if redis.call('SISMEMBER', KEYS[5], ARGV[1]) == 1 or redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return 0
end

-- Writes.
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
else
  local ok
  if pttl > 0 then
    ok = redis.call('SET', KEYS[3], ARGV[3], 'PX', pttl, 'NX')
  else
    ok = redis.call('SET', KEYS[3], ARGV[3], 'NX')
  end
  if not ok then
    return -1
  end
end
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('EXPIRE', KEYS[5], keep)
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
