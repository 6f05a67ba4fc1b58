
local function reserve(hk, sk, limit, ttl, now, month, reset)
  local h = redis.call('HMGET', hk, 'm', 'u')
  local used = 0
  if tonumber(h[1]) == month then
    used = tonumber(h[2]) or 0
  else
    redis.call('DEL', sk)
    redis.call('HSET', hk, 'm', string.format('%d', month), 'u', '0')
  end
  redis.call('ZREMRANGEBYSCORE', sk, '-inf', string.format('%d', now))
  local taken = used + redis.call('ZCARD', sk)
  local exp = string.format('%d', (reset + 86400) * 1000)
  redis.call('PEXPIREAT', hk, exp)
  if taken >= limit then
    return 0, taken, 0
  end
  local id = redis.call('HINCRBY', hk, 'n', 1)
  redis.call('ZADD', sk, string.format('%d', now + ttl), id)
  redis.call('PEXPIREAT', sk, exp)
  return 1, taken + 1, id
end
