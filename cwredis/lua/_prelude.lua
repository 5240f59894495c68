-- _prelude.lua: prepended to every script by scripts.py.
-- now_ms(arg): the caller's clock when given (tests move it), else the
-- server's. Leases compare times taken on one clock -- the server's -- so
-- skew between worker and coordinator hosts cannot expire a live lease.
local function now_ms(arg)
  if arg and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
