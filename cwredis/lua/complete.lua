--!flags allow-oom
-- complete.lua: record the outcomes of a batch of attempts, each only if that
-- attempt still owns its job (fencing), and wake the submitting clients.
-- KEYS: inflight(worker), failed, stats, then per job: job, results(client), result_seq(client)
-- ARGV: now_ms ('' = server time), done_ttl_ms, result_ttl_ms, publish_max_bytes,
--       then per job: job_id, token, kind ('ok'|'err'), body, reason, error, traceback, channel, output_tail
-- An outcome entry (push_outcome in the prelude); seq numbers a client's
-- entries so it can trim exactly what it consumed.
-- Returns one flag per job: 1 recorded, 0 refused (a newer attempt or a
-- requeue owns the job; this outcome is dropped, so delivery stays exactly once).
-- Atomic: state, in-flight list, outcome list and the wake-up change together,
-- so no crash can leave a job done without an outcome, or an outcome twice.
local inflight, failed, stats = KEYS[1], KEYS[2], KEYS[3]
local now, done_ttl, result_ttl = now_ms(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local publish_max = tonumber(ARGV[4])
local flags, done, failed_count = {}, 0, 0
local a, n = 5, 0
for k = 4, #KEYS, 3 do
  local job, results, seq_key = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local job_id, token, kind, body = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local reason, err, tb, channel, output = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
  a = a + 9
  n = n + 1
  local f = read_hash(job, 's', 'k', 'g', 'pf', 'n') or {}  -- not a hash: refused, like a lost lease
  if f[1] == 'running' and f[2] == token then
    redis.call('LREM', inflight, -1, job_id)  -- from the tail: the oldest taken are there
    -- Claimed ahead and its start not yet recorded ('pf'): it ran, so count it.
    -- One HSET and one HDEL per job: each command is a line in the append-only file.
    local charged = f[4] and {'n', (tonumber(f[5]) or 0) + 1} or {}
    if kind == 'ok' then
      redis.call('HSET', job, 's', 'done', unpack(charged))
      redis.call('HDEL', job, 'a', 'w', 'pg', 'pf')
      redis.call('PEXPIRE', job, done_ttl)
      done = done + 1
    else
      redis.call('HSET', job, 's', 'failed', 'r', reason, 'x', err, 'tb', tb, 'o', output, unpack(charged))
      redis.call('HDEL', job, 'w', 'pf')
      redis.call('ZADD', failed, now, job_id)
      failed_count = failed_count + 1
    end
    if channel ~= '' then  -- '' only when the job's spec (and so its client) is unknown
      push_outcome(results, seq_key, channel, job_id, f[3] or '0', kind, body, result_ttl, publish_max)
    end
    flags[n] = 1
  else
    flags[n] = 0
  end
end
-- The counters once per batch (fewer commands in the append-only file).
if done > 0 then redis.call('HINCRBY', stats, 'done', done) end
if failed_count > 0 then redis.call('HINCRBY', stats, 'failed', failed_count) end
return flags
