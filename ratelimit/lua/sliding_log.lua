
local W = 13
local function at(s, i)
  return tonumber(string.sub(s, i * W + 1, i * W + W), 16)
end
local function first_after(s, size, cutoff)
  local lo, hi = 0, size
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if at(s, mid) <= cutoff then lo = mid + 1 else hi = mid end
  end
  return lo
end
-- First the settlements: KEYS[1..ns], ARGV[2..ns+1] their marks.
local ns = tonumber(ARGV[1])
for i = 1, ns do
  qsettle(KEYS[i], ARGV[1 + i])
end
local pols = {}
local a = ns + 3
for q = 1, tonumber(ARGV[ns + 2]) do
  local n = tonumber(ARGV[a])
  local pol = {n = n, capacity = tonumber(ARGV[a + 1]), maxw = tonumber(ARGV[a + 2]), ttl = ARGV[a + 3]}
  a = a + 4
  for i = 1, 2 * n do
    pol[i] = tonumber(ARGV[a])
    a = a + 1
  end
  pols[q] = pol
end
-- The call's one TIME, when it decides requests (not for settlements
-- alone).
local clock = 0
if a <= #ARGV then
  local t = redis.call('TIME')
  clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local out, failure = {}, nil
local qmonth, qstart, qreset, qnow
local kc, j = ns + 1, 0
while a <= #ARGV do
  j = j + 1
  local key = KEYS[kc]
  local pol = pols[tonumber(ARGV[a])]
  local nq = tonumber(ARGV[a + 1])
  local qa, qk = a + 2, kc + 1
  a = a + 2 + 4 * nq
  kc = kc + 1 + nq
  local admitted = false
  local s, qvals
  if nq > 0 then
    -- The log and the quotas in one read. MGET reads a key of another
    -- type as none: the write replaces it.
    s = redis.pcall('MGET', key, unpack(KEYS, qk, qk + nq - 1))
    if not s.err then
      qvals = s
      s = s[1]
    end
  else
    s = redis.pcall('GET', key)
  end
  if type(s) == 'table' and s.err then
    failure = failure or s.err
    out[j] = 'e 0 0 0'
  else
    s = s or ''
    local now = clock
    local size = math.floor(#s / W)
    if size > 0 then
      -- A Redis clock stepped back must not free slots early.
      local last = at(s, size - 1)
      if now < last then now = last end
    end
    local blocked = false
    local dtier, dwait = 0, 0
    local rtier, rrem, rreset = 0, -1, 0
    local drop = 0
    for i = 0, pol.n - 1 do
      local limit, w = pol[2 * i + 1], pol[2 * i + 2]
      local first = first_after(s, size, now - w)
      if w == pol.maxw then drop = first end
      local count = size - first
      if count >= limit then
        local wait = at(s, first + count - limit) + w - now
        if (not blocked) or wait > dwait then
          dtier, dwait = i, wait
        end
        blocked = true
      elseif not blocked then
        local oldest = now
        if count > 0 then oldest = at(s, first) end
        local rem = limit - count - 1
        local reset = oldest + w - now
        if rrem < 0 or rem < rrem or (rem == rrem and reset > rreset) then
          rtier, rrem, rreset = i, rem, reset
        end
      end
    end
    if blocked then
      out[j] = string.format('0 %d 0 %d', dtier, dwait)
    else
      if size - drop >= pol.capacity then drop = size - pol.capacity + 1 end
      s = string.sub(s, drop * W + 1) .. string.format('%013x', now)
      local r = redis.pcall('SET', key, s, 'PX', pol.ttl)
      if type(r) == 'table' and r.err then
        failure = failure or r.err
        out[j] = 'e 0 0 0'
      else
        out[j] = string.format('1 %d %d %d', rtier, rrem, rreset)
        admitted = true
      end
    end
  end
  if nq > 0 then
    local parts = {out[j]}
    if admitted and not qmonth then
      -- The quotas' month and time, from the call's one TIME.
      local sec = math.floor(clock / 1000000)
      qnow = math.floor(clock / 1000)
      qmonth, qstart, qreset = month_of(sec)
    end
    local go = admitted
    for i = 0, nq - 1 do
      local ok, allowed, taken, id = false, 0, 0, 0
      -- The quota's own settlements, queued since its last call: folded
      -- into its value when it is written, else appended.
      local marks = ARGV[qa + 4 * i + 3]
      if go then
        local lim, ttl = tonumber(ARGV[qa + 4 * i]), tonumber(ARGV[qa + 4 * i + 1])
        ok, allowed, taken, id = pcall(function()
          local v = qvals[i + 2]
          if v and marks ~= '' then v = v .. marks end
          local q = qload(v, qmonth, qnow)
          local r, n, slot = qreserve(q, lim, ttl, qnow)
          if r == 1 then qsave(KEYS[qk + i], q, qmonth, qreset, qnow) end
          return r, n, slot
        end)
      end
      if marks ~= '' and not (ok and allowed == 1) then qsettle(KEYS[qk + i], marks) end
      if ok then
        parts[i + 2] = string.format('%d %d %d %d %d %d %d', allowed, taken, id, qmonth, qstart, qreset, qnow)
        if allowed == 0 and ARGV[qa + 4 * i + 2] == '1' then go = false end
      else
        parts[i + 2] = 'x'
        go = false
      end
    end
    out[j] = table.concat(parts, ' ')
  end
end
local reply = table.concat(out, ' ')
if failure then reply = reply .. '|' .. failure end
return reply
