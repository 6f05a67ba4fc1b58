
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local month, start, reset = month_of(sec)
local ok, taken, id = reserve(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), now, month, reset)
return {ok, taken, id, month, start, reset, now}
