-- submit.lua: make a batch of jobs durable and queue them, in one atomic step.
-- KEYS: queue, spec, fn_blob, env_blob, job_1 .. job_n
-- ARGV: spec_digest, fn_digest, blob_ttl_ms, has_blobs,
--       [if has_blobs: fn_blob, fn_name, env_blob, n, then n spec field/value pairs],
--       then per job: job_id, args_blob
-- Returns the number of jobs queued, or -1 (nothing written) when the spec or a
-- blob is missing and the caller did not send it (send it and call again).
-- A job id that already exists is skipped, so a submit retried after a lost
-- reply never queues a job twice.
local queue, spec_key, fn_key, env_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl = tonumber(ARGV[3])
local i = 5
if ARGV[4] == '1' then
  redis.call('HSET', fn_key, 'b', ARGV[5], 'n', ARGV[6])
  redis.call('HSET', env_key, 'b', ARGV[7])
  local n = tonumber(ARGV[8])
  redis.call('HSET', spec_key, unpack(ARGV, 9, 8 + 2 * n))
  i = 9 + 2 * n
elseif redis.call('EXISTS', spec_key) == 0 or redis.call('EXISTS', fn_key) == 0
    or redis.call('EXISTS', env_key) == 0 then
  return -1
end
-- Shared records live as long as the newest job that may still need them.
redis.call('PEXPIRE', spec_key, ttl)
redis.call('PEXPIRE', fn_key, ttl)
redis.call('PEXPIRE', env_key, ttl)
local queued = 0
for k = 5, #KEYS do
  local job_id, args = ARGV[i], ARGV[i + 1]
  i = i + 2
  if redis.call('EXISTS', KEYS[k]) == 0 then
    -- Attempts (n), token (k) and generation (g) start absent, read as 0:
    -- a queued job's memory is mostly field names.
    redis.call('HSET', KEYS[k], 's', 'pending', 'p', ARGV[1], 'f', ARGV[2], 'a', args)
    redis.call('LPUSH', queue, job_id)
    queued = queued + 1
  end
end
return queued
