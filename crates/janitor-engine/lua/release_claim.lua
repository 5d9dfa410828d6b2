-- Releases a claim (a metrics lease, a schedule slot) only if it still holds this caller's
-- value: a claim that expired and was taken by another instance is left alone.
-- KEYS[1]: the claim's key; ARGV[1]: the value it was taken with. Returns 1 if deleted.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
