
local W = 13
local t = redis.call('TIME')
local clock = tonumber(t[1]) * 1000000 + tonumber(t[2])
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
local pols = {}
local a = 2
for q = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local pol = {n = n, capacity = tonumber(ARGV[a + 1]), maxw = tonumber(ARGV[a + 2]), ttl = ARGV[a + 3]}
  a = a + 4
  for i = 1, 2 * n do
    pol[i] = tonumber(ARGV[a])
    a = a + 1
  end
  pols[q] = pol
end
local out, failure = {}, nil
local qmonth, qstart, qreset, qnow
local kc, j = 1, 0
while a <= #ARGV do
  j = j + 1
  local key = KEYS[kc]
  local pol = pols[tonumber(ARGV[a])]
  local nq = tonumber(ARGV[a + 1])
  local qa, qk = a + 2, kc + 1
  a = a + 2 + 3 * nq
  kc = kc + 1 + 2 * nq
  local admitted = false
  local s = redis.pcall('GET', key)
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
      if go then
        local lim, ttl = tonumber(ARGV[qa + 3 * i]), tonumber(ARGV[qa + 3 * i + 1])
        ok, allowed, taken, id = pcall(reserve, KEYS[qk + 2 * i], KEYS[qk + 2 * i + 1], lim, ttl, qnow, qmonth, qreset)
      end
      if ok then
        parts[i + 2] = string.format('%d %d %d %d %d %d %d', allowed, taken, id, qmonth, qstart, qreset, qnow)
        if allowed == 0 and ARGV[qa + 3 * i + 2] == '1' then go = false end
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
