-- Refreshes or releases a lock only if this holder's token still owns it (compare-and-set).
--
-- KEYS[1]: the lock key
-- ARGV[1]: token   ARGV[2]: "release", or a TTL in milliseconds to refresh to
-- Returns 1 when done, 0 when the lock is not held by this token (or the key is not a string).
if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'release' then
  redis.call('DEL', KEYS[1])
else
  local ttl = tonumber(ARGV[2])
  if ttl == nil or ttl <= 0 then
    return redis.error_reply('CJBADARG 2 not a positive TTL')
  end
  redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
