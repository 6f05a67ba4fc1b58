
local now, month, _, reset = qtime()
local q = qload(qget(KEYS[1]), month, now)
return {q.used, q.held, reset, now}
