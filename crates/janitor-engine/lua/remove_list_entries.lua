-- Removes exact messages from one queue list, atomically, in bounded linear passes.
--
-- Where a message is now: producers LPUSH at the head and consumers pop from the tail (BRPOP),
-- so a message read at distance `dr` from the tail is usually at `LLEN - 1 - dr + p`, where
-- `p` >= 0 counts the messages popped since it was read. The search probes that spot first,
-- then walks towards the tail in growing chunks, comparing each element with the target's spec
-- (length, locator, SHA-1 of the exact bytes; see checks.lua) (phase 1).
-- But RPUSHes at the tail (kombu puts unacked messages back there on a worker's warm shutdown
-- or visibility sweep; `celery-janitor restore` does too) move a message away from the tail.
-- Its index from the head, though, only ever grows (LPUSH), so if phase 1 reaches the tail
-- without finding it, phase 2 walks from its head index when read (`lo`) towards the tail, up
-- to where phase 1 started. Only when both miss is it gone (a worker took it, or it changed).
--
-- The search only reads. Then every found message is archived, overwritten with a tombstone,
-- and one LREM from the tail removes all tombstones of the call — no per-message LREM scan.
-- Workers never see a tombstone: the script is atomic, and everything that could fail (key
-- types, arguments, the lock, the archive writes) is checked or done before the first tombstone
-- is set. Work per call is capped (elements and bytes compared), so Redis stays responsive;
-- targets not reached are returned for the next call with the point the search got to, and so
-- are the targets after them (nearer the head) even when found, so that every removal of a call
-- lies nearer the tail than every target left for later (see the end of the script).
--
-- KEYS[1]: the queue list
-- KEYS[2]: the archive stream
-- KEYS[3]: the janitor lock
-- ARGV[1]: janitor lock token        ARGV[2]: tombstone (unique per call)
-- ARGV[3]: element budget            ARGV[4]: byte budget
-- ARGV[5]: archive MAXLEN (approximate)
-- ARGV[6+5i .. 10+5i], tail first: dr (distance from the tail when read, less this run's
--   removals nearer the tail), p (where to resume: pops to try first, or -1 - position to go on
--   with phase 2 from), lo (index from the head when read), spec of the exact bytes
--   (`sha1:length:locator`), archive metadata (JSON)
-- Errors (nothing written): CJWRONGTYPE, CJBADARG, LOCKLOST, CJARCHIVE (see checks.lua).
-- Returns two values per target: {archive id, the exact bytes removed} (the engine holds only
-- the spec, and writes the archive file from this reply), 'resume' (budget spent before it was
-- reached) or false (gone); and where it was found (pops, for phase-1 finds) or where the
-- search stopped (the `p` to resume with).
redis.replicate_commands()
local failed = cj_check(function()
  cj_groups(5, 5)
  cj_lock(3, ARGV[1])
  cj_expect(1, {'list'})
  cj_expect(2, {'stream'})
  for i = 3, 5 do
    cj_number(i, true)
  end
  for i = 6, #ARGV, 5 do
    cj_number(i, true)
    cj_number(i + 1, true)
    cj_number(i + 2, true)
    cj_spec(i + 3)
  end
end)
if failed then
  return failed
end

local len = redis.call('LLEN', KEYS[1])
local elements = tonumber(ARGV[3])
local bytes = tonumber(ARGV[4])
local results = {}
-- Hashing an element costs more than comparing its length: it counts this many times its size
-- against the byte budget.
local HASH_COST = 8
-- Found targets: list position, the index of their result pair, the archive fields.
local found_at, slots, items, values = {}, {}, {}, {}
-- Positions already matched by this call: two byte-identical targets must match two messages.
local claimed = {}
-- Targets come tail first, so each was read no later than the one before it: at least as many
-- pops have happened since, and the previous phase-1 find is a lower bound for this one.
local carry = 0

-- Whether element `value` is target `t` (exact bytes), charging the hashing to the budget.
local function is_target(value, t)
  local spec = t.spec
  if #value ~= spec.len then
    return false
  end
  if spec.locator ~= '' and string.find(value, spec.locator, 1, true) == nil then
    return false
  end
  bytes = bytes - HASH_COST * #value
  return redis.sha1hex(value) == spec.digest
end

-- Compares target `t` with positions from..to (inclusive) in growing chunks. Returns the
-- position found (or nil) and the first position not compared (to + 1 when the range was done).
local function walk(t, from, to)
  local step = 1
  local max_step = math.max(1, math.min(256, math.floor(4194304 / math.max(1, t.spec.len))))
  while from <= to and elements > 0 and bytes > 0 do
    local last = math.min(to, from + step - 1)
    local chunk = redis.call('LRANGE', KEYS[1], from, last)
    if #chunk == 0 then
      return nil, to + 1
    end
    for j = 1, #chunk do
      elements = elements - 1
      bytes = bytes - #chunk[j]
      if not claimed[from + j - 1] and is_target(chunk[j], t) then
        t.value = chunk[j]
        return from + j - 1, from + j
      end
    end
    from = from + #chunk
    step = math.min(step * 4, max_step)
  end
  return nil, from
end

local function found_it(t, pos, pops)
  claimed[pos] = true
  t.found, t.pos = true, pos
  results[t.slot] = false
  results[t.slot + 1] = math.max(0, pops)
end

-- Phase 2 for one target: a walk from its index from the head when read (or from where an
-- earlier call stopped) towards the tail, up to where phase 1 started. A walk is about as long
-- as the pushes at the head since the target was read.
local function phase_two(t)
  if t.from > t.to then
    return
  end
  local found, reached = walk(t, t.from, t.to)
  if found ~= nil then
    found_it(t, found, found - (len - 1 - t.dr))
  elseif reached <= t.to then
    results[t.slot] = 'resume'
    results[t.slot + 1] = -1 - reached
  end
end

-- Each target in order (tail first): phase 1, then at once phase 2 if phase 1 missed it. The
-- first target of a call gets the whole budget, so every call makes progress on it, and the
-- next call starts with it again (never with a target nearer the head, which could not be
-- removed before it).
local targets = {}
for i = 6, #ARGV, 5 do
  local t = {
    dr = tonumber(ARGV[i]), lo = math.max(0, tonumber(ARGV[i + 2])),
    spec = cj_spec(i + 3), meta = ARGV[i + 4], slot = #results + 1,
  }
  targets[#targets + 1] = t
  local p = tonumber(ARGV[i + 1])
  results[t.slot] = false
  results[t.slot + 1] = 0
  local base = len - 1 - t.dr
  if p >= 0 then
    if p < carry then p = carry end
    if p < -base then p = -base end
    if p < 0 then p = 0 end
    local start = base + p
    local found, reached = walk(t, start, len - 1)
    if found ~= nil then
      carry = found - base
      found_it(t, found, found - base)
    elseif reached <= len - 1 then
      -- Budget spent in phase 1: resume there.
      results[t.slot] = 'resume'
      results[t.slot + 1] = reached - base
    else
      -- Popped, or moved away from the tail (phase 2 tells). Messages read no later have seen
      -- at least as many pops, unless RPUSHes came in between: phase 2 covers that case.
      if t.dr + 1 > carry then carry = t.dr + 1 end
      t.from, t.to = t.lo, start - 1
      phase_two(t)
    end
  else
    t.from, t.to = -1 - p, len - 1
    phase_two(t)
  end
end

-- The caller (and the next call) rely on one rule: every removal so far lies nearer the tail
-- than every target still pending, so it moved none of their indices from the head, and their
-- distances from the tail shrink by exactly the removals counted. Targets come tail first, so
-- once one must resume, the targets after it that were found are not removed now but resumed
-- from where they are (their index from the head only grows until the next call).
local resuming = false
for _, t in ipairs(targets) do
  if results[t.slot] == 'resume' then
    resuming = true
  elseif t.found and resuming then
    claimed[t.pos] = nil
    t.found = false
    results[t.slot] = 'resume'
    results[t.slot + 1] = -1 - t.pos
  elseif t.found then
    found_at[#found_at + 1] = t.pos
    items[#items + 1] = {'kind', 'queue', 'key', KEYS[1], 'value', t.value, 'meta', t.meta}
    values[#values + 1] = t.value
    slots[#slots + 1] = t.slot
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
    results[slots[k]] = {ids[k], values[k]}
  end
  redis.call('LREM', KEYS[1], -#found_at, ARGV[2])
end
return results
