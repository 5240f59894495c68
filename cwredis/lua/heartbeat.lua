--!flags allow-oom
-- heartbeat.lua: renew a worker's lease and refresh its description.
-- KEYS: workers, worker_info
-- ARGV: worker_id, lease_ms, info_ttl_ms, now_ms ('' = server time), then info field/value pairs
-- Returns 1 if the lease was still valid, 0 if it had expired or the
-- coordinator had already swept the worker (its jobs were requeued).
-- Scripts replicate their effects, so what this writes is what the
-- append-only file keeps, three times a lease for every worker, idle ones
-- included. It writes little: the lease (one ZADD, about 80 bytes), the
-- description's fields only where they differ from what is stored (an idle
-- worker's never do; a description the coordinator deleted is written again
-- whole), and the description's time to live only once it has run down to
-- half of info_ttl_ms (info_ttl_ms is several leases: about once every
-- info_ttl_ms / 2). Reading before writing is safe here: the script is one
-- atomic step, and only this worker writes its description.
local workers, info = KEYS[1], KEYS[2]
local now, info_ttl = now_ms(ARGV[4]), tonumber(ARGV[3])
local old = tonumber(redis.call('ZSCORE', workers, ARGV[1]))
redis.call('ZADD', workers, now + tonumber(ARGV[2]), ARGV[1])
if #ARGV > 4 then
  local names = {}
  for i = 5, #ARGV, 2 do names[#names + 1] = ARGV[i] end
  local stored = read_hash(info, unpack(names)) or {}
  local changed = {}
  for j, name in ipairs(names) do
    local value = ARGV[4 + 2 * j]
    if stored[j] ~= value then
      changed[#changed + 1] = name
      changed[#changed + 1] = value
    end
  end
  if #changed > 0 then redis.call('HSET', info, unpack(changed)) end
end
-- PTTL is -1 for a description without a time to live, -2 for none (nothing to do).
local ttl = redis.call('PTTL', info)
if ttl ~= -2 and ttl < info_ttl / 2 then
  redis.call('PEXPIRE', info, info_ttl)
end
if old and old >= now then return 1 end
return 0
