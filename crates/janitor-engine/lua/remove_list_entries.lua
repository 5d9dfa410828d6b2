-- Removes exact messages from one queue list, atomically, in one linear pass.
--
-- Each target is found by searching forward from where it was seen (its index from the head at
-- scan time, less the entries this run already removed before it, plus the drift `shift` that
-- producers' LPUSHes caused since), compared byte for byte, overwritten with a tombstone, and
-- archived. One LREM of the tombstone at the end removes them all: no per-message LREM scan.
-- Workers never see the tombstone: the script is atomic.
--
-- KEYS[1]: the queue list
-- KEYS[2]: the archive stream
-- KEYS[3]: the janitor lock
-- ARGV[1]: janitor lock token        ARGV[2]: tombstone (unique per call)
-- ARGV[3]: shift estimate (>= 0)     ARGV[4]: search window
-- ARGV[5]: archive MAXLEN (approximate)
-- ARGV[6+3i], ARGV[7+3i], ARGV[8+3i]: lower-bound index, exact bytes, archive metadata (JSON)
-- Returns {shift, result_1, result_2, ...}; result = archive id, or false when the message was
-- not found (a worker took it, or it changed).
redis.replicate_commands()
if redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return redis.error_reply('LOCKLOST celery-janitor lock is not held by this run')
end
local shift = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local len = redis.call('LLEN', KEYS[1])
local results = {}
local marked = 0

local function search(from, to, want)
  if from < 0 then from = 0 end
  if to > len - 1 then to = len - 1 end
  local pos = from
  while pos <= to do
    local stop = math.min(pos + 127, to)
    local chunk = redis.call('LRANGE', KEYS[1], pos, stop)
    for j = 1, #chunk do
      if chunk[j] == want then return pos + j - 1 end
    end
    pos = stop + 1
  end
  return -1
end

for i = 6, #ARGV, 3 do
  local low = tonumber(ARGV[i])
  local want = ARGV[i + 1]
  local found = search(low + shift, low + shift + window, want)
  if found < 0 and shift > 0 then
    found = search(low, low + shift - 1, want)
  end
  if found >= 0 then
    shift = found - low
    redis.call('LSET', KEYS[1], found, ARGV[2])
    marked = marked + 1
    results[#results + 1] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
      'kind', 'queue', 'key', KEYS[1], 'value', want, 'meta', ARGV[i + 2])
  else
    results[#results + 1] = false
  end
end
if marked > 0 then
  redis.call('LREM', KEYS[1], marked, ARGV[2])
end
table.insert(results, 1, shift)
return results
