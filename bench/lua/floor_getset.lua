-- A floor for bench/floor and BenchmarkRealRedisConcurrent/floor_get_set:
-- called exactly as ratelimit/lua/sliding_log.lua is (routes without quotas),
-- it does only what a limiter keeping a log per identity must do in Redis
-- for each request of the call — read its log, write it back with one stamp
-- more (at most 11 kept: the log of a key at 50,000 identities under load)
-- with the window's TTL — and admits it. No window is counted.
local ns = tonumber(ARGV[1])
local a = ns + 3
for q = 1, tonumber(ARGV[ns + 2]) do a = a + 4 + 2 * tonumber(ARGV[a]) end
local t = redis.call('TIME')
local stamp = string.format('%013x', t[1] * 1000000 + t[2])
local out = {}
for j = ns + 1, #KEYS do
  local s = redis.call('GET', KEYS[j]) or ''
  redis.call('SET', KEYS[j], string.sub(s .. stamp, -143), 'PX', 60000)
  out[#out + 1] = '1 0 2 1000000'
end
return table.concat(out, ' ')
