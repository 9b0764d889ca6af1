#!lua
-- tollgate usage: mark an event's id and count it, atomically, so a crash
-- can neither count without marking nor mark without counting.
--
-- KEYS[1] id mark, KEYS[2] the user's day (hash), KEYS[3] the user's tier (hash).
-- ARGV: ttl seconds, category, timestamp µs, tier, then metric name/value pairs.
-- Returns 1 when counted, 0 for a duplicate.
local ttl = tonumber(ARGV[1])
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ttl) then
  return 0
end
redis.call('HINCRBY', KEYS[2], 'c:' .. ARGV[2], 1)
for i = 5, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[2], 'm:' .. ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], ttl)
local at = tonumber(redis.call('HGET', KEYS[3], 'at') or '-1')
if tonumber(ARGV[3]) >= at then
  redis.call('HSET', KEYS[3], 'tier', ARGV[4], 'at', ARGV[3])
end
redis.call('EXPIRE', KEYS[3], ttl)
return 1
