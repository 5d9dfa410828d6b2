-- Puts one archived entry back where it was, once. The archive id is recorded in the run's
-- restored-ids set, so a second restore (from the stream or from an archive file) is a no-op;
-- ids restored by earlier versions are in the global set, which is only read.
--
-- Everything that can fail (key types, argument shapes) is checked before the first write, so
-- a failing call writes nothing. Errors (error replies, nothing written):
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

local function wrong_type(i, allowed)
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t == 'none' then
    return nil
  end
  for _, want in ipairs(allowed) do
    if t == want then
      return nil
    end
  end
  return redis.error_reply('CJWRONGTYPE ' .. i .. ' ' .. t .. ' ' .. table.concat(allowed, '|'))
end

local function bad_arg(i, why)
  return redis.error_reply('CJBADARG ' .. i .. ' ' .. why)
end

local function integer(s)
  local n = tonumber(s)
  if n == nil or n ~= n or math.floor(n) ~= n then
    return nil
  end
  return n
end

-- Argument shapes.
if #KEYS ~= 5 or #ARGV ~= 7 then
  return bad_arg(0, 'expected 5 keys and 7 arguments, got ' .. #KEYS .. ' and ' .. #ARGV)
end
if ARGV[1] == '' then
  return bad_arg(1, 'empty archive id')
end
local kind = ARGV[2]
if kind ~= 'queue' and kind ~= 'unacked' and kind ~= 'result' then
  return bad_arg(2, 'unknown archive kind ' .. kind)
end
local keep = integer(ARGV[7])
if keep == nil or keep <= 0 then
  return bad_arg(7, 'not a positive number of seconds')
end
local pttl = nil
if kind == 'unacked' then
  if ARGV[4] == '' then
    return bad_arg(4, 'empty unacked field')
  end
  if ARGV[5] ~= '' and tonumber(ARGV[5]) == nil then
    return bad_arg(5, 'not a score')
  end
elseif kind == 'result' then
  pttl = integer(ARGV[6])
  if pttl == nil then
    return bad_arg(6, 'not a PTTL')
  end
end

-- Key types: the bookkeeping keys, then the target.
local err = wrong_type(1, {'stream'}) or wrong_type(2, {'set'}) or wrong_type(5, {'set'})
if err then
  return err
end
if kind == 'queue' then
  err = wrong_type(3, {'list'})
elseif kind == 'unacked' then
  err = wrong_type(3, {'hash'})
  if not err and ARGV[5] ~= '' then
    err = wrong_type(4, {'zset'})
  end
else
  err = wrong_type(3, {'string'})
end
if err then
  return err
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
