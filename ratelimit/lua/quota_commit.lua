
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'm') == ARGV[2] then
  return redis.call('HINCRBY', KEYS[1], 'u', 1)
end
return -1
