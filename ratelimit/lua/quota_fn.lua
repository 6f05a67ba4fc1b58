
-- A quota's value (see quota_redis.go): "<month> <used> <last id>", then
-- its events in order: " r<id>:<expiry ms>" a slot reserved, " c<id>" its
-- commit, " x<id>" its release. Commits and releases are appended (APPEND)
-- by the settlements; reading replays them, and the next write folds them
-- into the header.

-- qload reads value s (false or nil: none) as of month at now (ms): a
-- value of another month starts afresh but keeps its last id, reservations
-- past their expiry are dropped, and a settlement counts only while its
-- slot is held (settling twice changes nothing). A value it cannot read
-- is an error: never counted from zero.
local function qload(s, month, now)
  local q = {used = 0, last = 0, held = 0, ids = {}, exp = {}}
  if not s then return q end
  local m, u, n, rest = string.match(s, '^(%d+) (%d+) (%d+)(.*)$')
  if not m then error('quota value unreadable') end
  q.last = tonumber(n)
  if tonumber(m) ~= month then return q end
  q.used = tonumber(u)
  for op, id, e in string.gmatch(rest, ' (%a)(%d+):?(%d*)') do
    if op == 'r' then
      if tonumber(e) > now then
        q.exp[id] = e
        q.ids[#q.ids + 1] = id
        q.held = q.held + 1
      end
    elseif q.exp[id] then
      q.exp[id] = nil
      q.held = q.held - 1
      if op == 'c' then q.used = q.used + 1 end
    end
  end
  return q
end

-- qtime returns Redis' time in ms, its calendar month and the Unix
-- seconds of the month's start and of the next month's: a quota script's
-- clock.
local function qtime()
  local t = redis.call('TIME')
  local sec = tonumber(t[1])
  local month, start, reset = month_of(sec)
  return sec * 1000 + math.floor(tonumber(t[2]) / 1000), month, start, reset
end

-- qget reads key k's value as MGET does in the rate-limit script: a key
-- of another type (the first quota builds' hash) reads as none, and the
-- next write replaces it.
local function qget(k)
  local ok, v = pcall(redis.call, 'GET', k)
  if ok then return v end
  return false
end

-- qreserve takes a slot of q for ttl ms when fewer than limit are used or
-- held. It returns allowed (0/1), the slots taken after it and the slot's
-- id (0 when refused).
local function qreserve(q, limit, ttl, now)
  local taken = q.used + q.held
  if taken >= limit then return 0, taken, 0 end
  q.last = q.last + 1
  local id = string.format('%d', q.last)
  q.exp[id] = string.format('%d', now + ttl)
  q.ids[#q.ids + 1] = id
  q.held = q.held + 1
  return 1, taken + 1, q.last
end

-- qsave writes q as month's value of key k, expiring a day after the
-- month ends (reset: the next month's start, Unix s).
local function qsave(k, q, month, reset, now)
  local parts = {string.format('%d %d %d', month, q.used, q.last)}
  for _, id in ipairs(q.ids) do
    local e = q.exp[id]
    if e then parts[#parts + 1] = 'r' .. id .. ':' .. e end
  end
  redis.call('SET', k, table.concat(parts, ' '), 'PX', string.format('%d', (reset + 86400) * 1000 - now))
end

-- qsettle appends settlement mark to key k: one command. A key that had
-- gone (expired or evicted: its slot with it) is not made again for it.
local function qsettle(k, mark)
  local ok, n = pcall(redis.call, 'APPEND', k, mark)
  if ok and n == #mark then redis.call('DEL', k) end
end
