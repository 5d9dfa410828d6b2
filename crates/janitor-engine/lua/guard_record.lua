-- Records one guard event atomically: counts it per node, appends it to the capped stream of
-- last events, and for a skipped or revoked task archives and deletes its result key unless
-- that result is final (SUCCESS or FAILURE): a worker may have stored STARTED, RETRY or
-- PENDING for a task that then never ran. The archive entry has the same fields as every
-- removal (`remove_results.lua`), so `restore` can put it back.
--
-- When broker and backend are different Redis servers the engine calls this twice: mode
-- 'result' on the backend (archive and delete only), then mode 'stats' on the broker (count
-- and event, naming the archive id); mode 'all' does both in one call.
--
-- KEYS[1]: stats hash   KEYS[2]: events stream   KEYS[3]: archive stream   KEYS[4]: result key
-- ARGV[1]: mode ('all' | 'stats' | 'result')   ARGV[2]: stats field (`<node>|<counter>`)
-- ARGV[3]: events MAXLEN   ARGV[4]: archive MAXLEN   ARGV[5]: archive metadata (JSON)
-- ARGV[6]: '1' when the result key may be removed (skipped or revoked), else '0'
-- ARGV[7..]: event fields, name/value pairs
-- Errors (nothing written): CJWRONGTYPE, CJBADARG, CJARCHIVE (see checks.lua).
-- Returns {result fate, archive id or false, event id or false}; the fate is 'removed',
-- 'kept:<status>' (final), 'not-json', 'none' (no result key, or another type) or 'untouched'.
redis.replicate_commands()
local mode = ARGV[1]
local failed = cj_check(function()
  cj_groups(6, 2)
  if mode ~= 'all' and mode ~= 'stats' and mode ~= 'result' then
    error('CJBADARG 1 mode must be all, stats or result', 0)
  end
  if mode ~= 'result' then
    cj_expect(1, {'hash'})
    cj_expect(2, {'stream'})
    cj_number(3, true)
  end
  if mode ~= 'stats' then
    cj_expect(3, {'stream'})
    cj_number(4, true)
  end
end)
if failed then
  return failed
end

local fate, archive_id, event_id = 'untouched', false, false
if mode ~= 'stats' and ARGV[6] == '1' then
  local value = redis.call('TYPE', KEYS[4])['ok'] == 'string' and redis.call('GET', KEYS[4])
  if not value then
    fate = 'none'
  else
    local ok, meta = pcall(cjson.decode, value)
    local status = ok and type(meta) == 'table' and meta['status']
    if type(status) ~= 'string' then
      fate = 'not-json'
    elseif status == 'SUCCESS' or status == 'FAILURE' then
      fate = 'kept:' .. status
    else
      local pttl = redis.call('PTTL', KEYS[4])
      local ids, err = cj_archive_all(3, ARGV[4], {{'kind', 'result', 'key', KEYS[4],
        'pttl', pttl, 'value', value, 'meta', ARGV[5]}})
      if err then
        return err
      end
      redis.call('DEL', KEYS[4])
      fate, archive_id = 'removed', ids[1]
    end
  end
end

if mode ~= 'result' then
  redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
  local fields = {}
  for i = 7, #ARGV do
    fields[#fields + 1] = ARGV[i]
  end
  if archive_id then
    fields[#fields + 1] = 'archive_id'
    fields[#fields + 1] = archive_id
  end
  event_id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
end
return {fate, archive_id, event_id}
