
local now, month, start, reset = qtime()
local q = qload(qget(KEYS[1]), month, now)
local ok, taken, id = qreserve(q, tonumber(ARGV[1]), tonumber(ARGV[2]), now)
if ok == 1 then qsave(KEYS[1], q, month, reset, now) end
return {ok, taken, id, month, start, reset, now}
