--!flags allow-oom
-- heartbeat.lua: renew a worker's lease and refresh its description.
-- KEYS: workers, worker_info
-- ARGV: worker_id, lease_ms, info_ttl_ms, now_ms ('' = server time), then info field/value pairs
-- Returns 1 if the lease was still valid, 0 if it had expired or the
-- coordinator had already swept the worker (its jobs were requeued).
local workers, info = KEYS[1], KEYS[2]
local now = now_ms(ARGV[4])
local old = tonumber(redis.call('ZSCORE', workers, ARGV[1]))
redis.call('ZADD', workers, now + tonumber(ARGV[2]), ARGV[1])
if #ARGV > 4 then
  redis.call('HSET', info, unpack(ARGV, 5))
end
redis.call('PEXPIRE', info, tonumber(ARGV[3]))
if old and old >= now then return 1 end
return 0
