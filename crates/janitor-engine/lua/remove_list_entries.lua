-- Removes exact messages from one queue list, atomically, in one linear pass per call.
--
-- Positions are anchored at the list's tail: producers LPUSH at the head, which does not move a
-- message relative to the tail; only consumers' pops from the tail do. So a message read at
-- distance `dr` from the tail is now at `LLEN - 1 - dr + p`, where `p` >= 0 counts the messages
-- popped since it was read (0 when no worker consumed). The search probes the predicted spot
-- first, then walks towards the tail in growing chunks, comparing exact bytes. The search only
-- reads. Then every found message is archived, overwritten with a tombstone, and one LREM from
-- the tail removes all tombstones of the call — no per-message LREM scan. Workers never see a
-- tombstone: the script is atomic, and everything that could fail (key types, arguments, the
-- lock, the archive writes) is checked or done before the first tombstone is set.
-- Work per call is capped (elements and bytes compared), so Redis stays responsive; targets
-- not reached are returned for the next call with the point the search got to.
--
-- KEYS[1]: the queue list
-- KEYS[2]: the archive stream
-- KEYS[3]: the janitor lock
-- ARGV[1]: janitor lock token        ARGV[2]: tombstone (unique per call)
-- ARGV[3]: element budget            ARGV[4]: byte budget
-- ARGV[5]: archive MAXLEN (approximate)
-- ARGV[6+4i .. 9+4i], tail first: dr (distance from the tail when read, less this run's removals
--   nearer the tail), p (pops to try first), exact bytes, archive metadata (JSON)
-- Errors (nothing written): CJWRONGTYPE, CJBADARG, LOCKLOST, CJARCHIVE (see checks.lua).
-- Returns two values per target: the archive id, 'resume' (budget spent before it was reached)
-- or false (gone: a worker took it, or it changed); and the pop count where it was found or
-- where the search stopped.
redis.replicate_commands()
local failed = cj_check(function()
  cj_groups(5, 4)
  cj_lock(3, ARGV[1])
  cj_expect(1, {'list'})
  cj_expect(2, {'stream'})
  for i = 3, 5 do
    cj_number(i, true)
  end
  for i = 6, #ARGV, 4 do
    cj_number(i, true)
    cj_number(i + 1, true)
  end
end)
if failed then
  return failed
end

local len = redis.call('LLEN', KEYS[1])
local elements = tonumber(ARGV[3])
local bytes = tonumber(ARGV[4])
local results = {}
-- Found targets: list position, the index of their result pair, the archive fields.
local found_at, slots, items = {}, {}, {}
-- Positions already matched by this call: two byte-identical targets must match two messages.
local claimed = {}
-- Targets come tail first, so each was read no later than the one before it: at least as many
-- pops have happened since, and the previous find is a lower bound for this one.
local carry = 0

for i = 6, #ARGV, 4 do
  local dr = tonumber(ARGV[i])
  local p = tonumber(ARGV[i + 1])
  local want = ARGV[i + 2]
  local base = len - 1 - dr
  if p < carry then p = carry end
  if p < -base then p = -base end
  if p < 0 then p = 0 end
  local found = nil
  local step = 1
  local max_step = math.max(1, math.min(256, math.floor(4194304 / math.max(1, #want))))
  while found == nil and p <= dr and elements > 0 and bytes > 0 do
    local from = base + p
    local to = math.min(len - 1, from + step - 1)
    if from > to then
      break
    end
    local chunk = redis.call('LRANGE', KEYS[1], from, to)
    if #chunk == 0 then
      break
    end
    for j = 1, #chunk do
      elements = elements - 1
      bytes = bytes - #chunk[j]
      if chunk[j] == want and not claimed[from + j - 1] then
        found = from + j - 1
        break
      end
    end
    if found == nil then
      p = p + #chunk
      step = math.min(step * 4, max_step)
    end
  end
  if found ~= nil then
    found_at[#found_at + 1] = found
    claimed[found] = true
    items[#items + 1] = {'kind', 'queue', 'key', KEYS[1], 'value', want, 'meta', ARGV[i + 3]}
    results[#results + 1] = false
    slots[#slots + 1] = #results
    carry = found - base
    results[#results + 1] = carry
  elseif p <= dr and (elements <= 0 or bytes <= 0) then
    results[#results + 1] = 'resume'
    results[#results + 1] = p
  else
    -- Searched to the tail: it was popped (pops take the tail first, so more than `dr` pops
    -- happened since it was read), or changed. Messages read no later have seen as many pops.
    if dr + 1 > carry then carry = dr + 1 end
    results[#results + 1] = false
    results[#results + 1] = p
  end
end

if #found_at > 0 then
  -- Archive first: if that fails, nothing has been written (see checks.lua).
  local ids, err = cj_archive_all(2, ARGV[5], items)
  if err then
    return err
  end
  for k, pos in ipairs(found_at) do
    redis.call('LSET', KEYS[1], pos, ARGV[2])
    results[slots[k]] = ids[k]
  end
  redis.call('LREM', KEYS[1], -#found_at, ARGV[2])
end
return results
