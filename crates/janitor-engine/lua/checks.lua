-- Checks shared by every script that writes; redis_io.rs prepends this file to each of them.
--
-- Redis does not roll a script back: a command that fails after an earlier write leaves that
-- write in place. So each script first runs `cj_check`, which reads only: key types, argument
-- shapes and the janitor lock. A failing check returns an error reply and the script writes
-- nothing. Errors name keys by their index (KEYS[i]); the engine turns that into the key name,
-- since key names may hold bytes an error line can't carry.
--
--   CJWRONGTYPE <i> <type found> <types expected, |-separated>
--   CJBADARG <i> <why>
--   LOCKLOST ...
--
-- The engine never holds the bytes of what it plans to remove, only a spec of them (see
-- `cj_spec`): the SHA-1 of the exact bytes, their length, and a locator (the task id when it
-- appears as plain text in the bytes, else empty). `cj_is` compares a value with a spec
-- exactly: cheap tests first, the digest last.

-- The type of KEYS[i] ('none' when missing); fails unless it is missing or one of `allowed`.
local function cj_expect(i, allowed)
  local t = redis.call('TYPE', KEYS[i])['ok']
  if t == 'none' then
    return t
  end
  for _, want in ipairs(allowed) do
    if t == want then
      return t
    end
  end
  error('CJWRONGTYPE ' .. i .. ' ' .. t .. ' ' .. table.concat(allowed, '|'), 0)
end

-- ARGV[i] as a number; fails if it is not one (or not an integer, when `integer` is set).
local function cj_number(i, integer)
  local n = tonumber(ARGV[i])
  if n == nil or n ~= n then
    error('CJBADARG ' .. i .. ' not a number', 0)
  end
  if integer and math.floor(n) ~= n then
    error('CJBADARG ' .. i .. ' not an integer', 0)
  end
  return n
end

-- ARGV[i] as a spec `<sha1 hex>:<length>:<locator>`; fails if it is not one.
local function cj_spec(i)
  local digest, len, locator = string.match(ARGV[i], '^(%x+):(%d+):(.*)$')
  if digest == nil or #digest ~= 40 then
    error('CJBADARG ' .. i .. ' not a value spec (sha1:length:locator)', 0)
  end
  return {digest = string.lower(digest), len = tonumber(len), locator = locator}
end

-- Whether `value` is exactly the bytes `spec` stands for.
local function cj_is(value, spec)
  if type(value) ~= 'string' or #value ~= spec.len then
    return false
  end
  if spec.locator ~= '' and string.find(value, spec.locator, 1, true) == nil then
    return false
  end
  return redis.sha1hex(value) == spec.digest
end

-- Fails unless the argument list is `head` fixed values then whole groups of `group`.
local function cj_groups(head, group)
  if #ARGV < head or (#ARGV - head) % group ~= 0 then
    error('CJBADARG 0 expected ' .. head .. ' arguments then groups of ' .. group .. ', got ' .. #ARGV, 0)
  end
end

-- Fails unless KEYS[i], the janitor lock, holds `token`.
local function cj_lock(i, token)
  cj_expect(i, {'string'})
  if redis.call('GET', KEYS[i]) ~= token then
    error('LOCKLOST celery-janitor lock is not held by this run', 0)
  end
end

-- Runs the read-only checks; returns an error reply when one fails, else nil.
local function cj_check(checks)
  local ok, err = pcall(checks)
  if ok then
    return nil
  end
  if type(err) == 'table' then
    err = err.err or err.message or 'ERR script check failed'
  end
  return redis.error_reply(tostring(err))
end

-- Archives every item (a list of XADD field/value pairs) in the stream KEYS[stream], in order.
-- Each script archives before any other write, so if one XADD fails (its first write refused
-- for lack of memory, a stream whose last id can't grow) the ones before are deleted again and
-- the script has changed nothing. Returns the archive ids, or nil and an error reply.
local function cj_archive_all(stream, maxlen, items)
  local ids = {}
  for _, fields in ipairs(items) do
    local ok, id = pcall(redis.call, 'XADD', KEYS[stream], 'MAXLEN', '~', maxlen, '*', unpack(fields))
    if not ok then
      for _, done in ipairs(ids) do
        redis.call('XDEL', KEYS[stream], done)
      end
      if type(id) == 'table' then
        id = id.err or 'ERR archive write failed'
      end
      return nil, redis.error_reply('CJARCHIVE ' .. tostring(id))
    end
    ids[#ids + 1] = id
  end
  return ids, nil
end
