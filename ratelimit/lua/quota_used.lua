
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local month, _, reset = month_of(sec)
local h = redis.call('HMGET', KEYS[1], 'm', 'u')
if tonumber(h[1]) ~= month then return {0, 0, reset, now} end
return {tonumber(h[2]) or 0, redis.call('ZCOUNT', KEYS[2], '(' .. string.format('%d', now), '+inf'), reset, now}
