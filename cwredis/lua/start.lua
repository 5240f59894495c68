--!flags allow-oom
-- start.lua: record that jobs claimed ahead (prefetched) have started, charging each its attempt.
-- KEYS: job_1 .. job_n
-- ARGV: token_1 .. token_n
-- Fenced by token, and only for jobs still marked 'pf': repeating it (a
-- round trip whose reply was lost) charges nothing twice.
-- Returns the number recorded.
local n = 0
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 's', 'k', 'pf')
  if f[1] == 'running' and f[2] == ARGV[i] and f[3] then
    redis.call('HINCRBY', KEYS[i], 'n', 1)
    redis.call('HDEL', KEYS[i], 'pf')
    n = n + 1
  end
end
return n
