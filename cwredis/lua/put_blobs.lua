--!flags
-- put_blobs.lua: store argument blobs (cwredis/argblobs.py), or renew those
-- already stored, before the jobs naming them are submitted.
-- KEYS: blob_1 .. blob_n
-- ARGV: ttl_ms, then per blob: data ('' : the caller believes it is stored)
-- Returns the indexes (1-based) of blobs sent without data that are missing:
-- the caller sends them again with their data. A blob lives ttl_ms after
-- the last submit naming it (keep_alive), like function blobs.
-- No script flags, like submit.lua: refused as a whole at maxmemory.
local ttl = tonumber(ARGV[1])
local missing = {}
for k = 1, #KEYS do
  local data = ARGV[k + 1]
  if data ~= '' then
    redis.call('HSET', KEYS[k], 'b', data)
    redis.call('PEXPIRE', KEYS[k], ttl)
  elseif redis.call('EXISTS', KEYS[k]) == 1 then
    keep_alive(KEYS[k], ttl)
  else
    missing[#missing + 1] = k
  end
end
return missing
