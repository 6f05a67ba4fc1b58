
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local month, _, reset = month_of(sec)
local q = qload(qget(KEYS[1]), month, now)
return {q.used, q.held, reset, now}
