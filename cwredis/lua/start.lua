--!flags allow-oom
-- start.lua: record that jobs claimed ahead (prefetched) have started, charging each its attempt.
-- KEYS: job_1 .. job_n
-- ARGV: token_1 .. token_n
-- Fenced by token, and only for jobs still marked 'pf': repeating it (a
-- round trip whose reply was lost) charges nothing twice.
-- Returns the number recorded.
-- A key that is not a hash, or a garbage count, is skipped or read as 0, never
-- an error: the same round trip carries the worker's outcomes and claim.
local n = 0
for i = 1, #KEYS do
  local f = read_hash(KEYS[i], 's', 'k', 'pf', 'n') or {}
  if f[1] == 'running' and f[2] == ARGV[i] and f[3] then
    redis.call('HSET', KEYS[i], 'n', (tonumber(f[4]) or 0) + 1)
    redis.call('HDEL', KEYS[i], 'pf')
    n = n + 1
  end
end
return n
