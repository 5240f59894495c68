--!flags allow-oom
-- progress.lua: store a running job's latest progress and pass it to its client.
-- KEYS: job
-- ARGV: token, stored_text, channel, published_message
-- Fenced like complete.lua: a report from an attempt that no longer owns the
-- job (or for a job already finished, whose record may have expired) is
-- dropped, so it can neither resurrect a record nor reach the client late.
-- Returns 1 if passed on, 0 if dropped.
local f = read_hash(KEYS[1], 's', 'k') or {}  -- not a hash: dropped
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'pg', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
