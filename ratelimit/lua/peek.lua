
local t = redis.call('TIME')
local s = redis.call('GET', KEYS[1])
if not s then s = '' end
return {t[1], t[2], s}
