
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000 + math.floor(tonumber(t[2]) / 1000)
local month, start, reset = month_of(sec)
local q = qload(qget(KEYS[1]), month, now)
local ok, taken, id = qreserve(q, tonumber(ARGV[1]), tonumber(ARGV[2]), now)
if ok == 1 then qsave(KEYS[1], q, month, reset, now) end
return {ok, taken, id, month, start, reset, now}
