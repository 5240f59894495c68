--!flags allow-oom
-- progress.lua: store a running job's latest progress and pass it to its client;
-- store the tail of its output (for cw-admin logs and the dashboard).
-- KEYS: job
-- ARGV: token, stored_text ('' : no new report), channel, published_message, output_tail ('' : unchanged)
-- Fenced like complete.lua: a report from an attempt that no longer owns the
-- job (or for a job already finished, whose record may have expired) is
-- dropped, so it can neither resurrect a record nor reach the client late.
-- Returns 1 if passed on, 0 if dropped.
local f = read_hash(KEYS[1], 's', 'k') or {}  -- not a hash: dropped
if f[1] ~= 'running' or f[2] ~= ARGV[1] then return 0 end
local fields = {}
if ARGV[2] ~= '' then fields[#fields + 1] = 'pg'; fields[#fields + 1] = ARGV[2] end
if ARGV[5] and ARGV[5] ~= '' then fields[#fields + 1] = 'lo'; fields[#fields + 1] = ARGV[5] end
if #fields > 0 then redis.call('HSET', KEYS[1], unpack(fields)) end
if ARGV[2] ~= '' then redis.call('SPUBLISH', ARGV[3], ARGV[4]) end
return 1
