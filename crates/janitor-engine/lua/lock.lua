-- Refreshes or releases a lock only if this holder's token still owns it (compare-and-set).
--
-- KEYS[1]: the lock key
-- ARGV[1]: token   ARGV[2]: "release", or a TTL in milliseconds to refresh to
-- Returns 1 when done, 0 when the lock is not held by this token.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 1
