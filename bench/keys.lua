-- wrk script: every request carries the next API key of a file (one key a
-- line) in X-API-Key, in rotation. The requests are formatted once, in
-- init, so the script costs wrk no more per request than a fixed request.
--
--   wrk -t1 -c32 -d10s -s bench/keys.lua http://127.0.0.1:18080/api/v1/customers -- keys.txt [offset]
--
-- With several threads (-t), thread t starts its rotation at
-- offset + t*1009, so threads do not send the same key together.

local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
end

local reqs = {}
local i = 0

function init(args)
   local path = args[1] or error("keys.lua: give the key file after --")
   local offset = tonumber(args[2] or "0")
   local f = assert(io.open(path, "r"))
   local keys = {}
   for line in f:lines() do
      if #line > 0 then keys[#keys + 1] = line end
   end
   f:close()
   assert(#keys > 0, "keys.lua: no key in " .. path)
   for n, k in ipairs(keys) do
      reqs[n] = wrk.format(nil, nil, { ["X-API-Key"] = k })
   end
   i = (offset + (id or 0) * 1009) % #reqs
end

function request()
   i = i + 1
   if i > #reqs then i = 1 end
   return reqs[i]
end
