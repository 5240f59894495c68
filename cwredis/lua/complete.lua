--!flags allow-oom
-- complete.lua: record the outcomes of a batch of attempts, each only if that
-- attempt still owns its job (fencing), and wake the submitting clients.
-- KEYS: inflight(worker), failed, stats, then per job: job
-- ARGV: now_ms ('' = server time), done_ttl_ms, result_ttl_ms, publish_max_bytes,
--       outcome_prefixes (3 names: results, result_seq, channel), spec_prefix, worker_id,
--       then per job: job_id, token, kind ('ok'|'err'), body, reason, error, traceback, client, output_tail,
--       staged (the key a large body was written to beside this call, body then ''; '' : none)
-- The outcome goes to the client ('' : unknown, delivered to no one), or to
-- every client attached to a session's job (deliver() in the prelude). An
-- outcome entry's seq numbers a client's entries so it can trim exactly what
-- it consumed.
-- Reason 'cancelled' (the worker stopped the job on request): the job ends
-- without using up an attempt and is not listed as failed; it is never retried.
-- The stats counters: 'done' and 'failed' in all, and 'done:<queue>' /
-- 'failed:<queue>' per queue (for the dashboard's rates and /metrics); the
-- queue is read from the job's spec, once per spec in a batch.
-- A staged body (Scripts.stage) stays where it is: the client's entry is
-- 'ref' with "kind\nkey" as its body, published as 'big' (the client reads
-- the list, then the key, and deletes the key as it trims the entry). A
-- session's job keeps its outcome in its record for later attachers, so its
-- staged body is read into that record instead and the key deleted; so is a
-- refused one's, and one that goes to no client.
-- Returns one flag per job: 1 recorded, 0 refused (a newer attempt or a
-- requeue owns the job; this outcome is dropped, so delivery stays exactly once).
-- The fence is the attempt's token *and* the worker holding it: after a
-- failover that lost writes, a token can be handed out twice, to two workers.
-- Atomic: state, in-flight list, outcome list and the wake-up change together,
-- so no crash can leave a job done without an outcome, or an outcome twice.
local inflight, failed, stats = KEYS[1], KEYS[2], KEYS[3]
local now, done_ttl, result_ttl = now_ms(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local publish_max = tonumber(ARGV[4])
local op = outcome_prefixes(ARGV, 5)
local spec_prefix, worker_id = ARGV[8], ARGV[9]
local flags, done, failed_count = {}, 0, 0
local queues, done_in, failed_in = {}, {}, {}  -- spec digest -> queue name; queue -> count
local a, n = 10, 0
for k = 4, #KEYS do
  local job = KEYS[k]
  local job_id, token, kind, body = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local reason, err, tb, client, output = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], ARGV[a + 8]
  local staged = ARGV[a + 9]
  a = a + 10
  n = n + 1
  local f = read_hash(job, 's', 'k', 'g', 'pf', 'n', 'rc', 'p', 'w', 'pg', 'lo') or {}  -- not a hash: refused
  local owned = f[1] == 'running' and f[2] == token and f[8] == worker_id
  local by_ref = false
  if staged ~= '' then
    -- A staged body missing (never the case: its SET came first on this connection) records nothing.
    -- (EXISTS, a read: the SET gave the key the results' lifetime already.)
    by_ref = owned and not f[6] and client ~= '' and redis.call('EXISTS', staged) == 1
    if owned and not by_ref then
      body = redis.call('GET', staged)
      owned = body ~= false
    end
    if not by_ref then redis.call('DEL', staged) end
  end
  if owned then
    redis.call('LREM', inflight, -1, job_id)  -- from the tail: the oldest taken are there
    -- Claimed ahead and its start not yet recorded ('pf'): it ran, so count it.
    -- One HSET and one HDEL per job: each command is a line in the append-only file.
    local attempts = tonumber(f[5]) or 0
    local charged = f[4] and {'n', attempts + 1} or {}
    if reason == 'cancelled' then charged = {'n', math.max(f[4] and attempts or attempts - 1, 0)} end
    local spec = f[7] or ''
    if queues[spec] == nil then queues[spec] = read_field(spec_prefix .. spec, 'q') or '' end
    local ttl
    if kind == 'ok' then
      redis.call('HSET', job, 's', 'done', unpack(charged))
      -- Only the fields it has (the append-only file records the command as sent): its arguments,
      -- holder, prefetch mark, progress, and live output (the client has that now).
      local gone = {'a', 'w'}
      if f[4] then gone[#gone + 1] = 'pf' end
      if f[9] then gone[#gone + 1] = 'pg' end
      if f[10] then gone[#gone + 1] = 'lo' end
      redis.call('HDEL', job, unpack(gone))
      drop_staged_args(job)
      ttl = done_ttl
      done = done + 1
      if queues[spec] ~= '' then tally(done_in, queues[spec]) end
    else
      redis.call('HSET', job, 's', 'failed', 'r', reason, 'x', err, 'tb', tb, 'o', output, unpack(charged))
      redis.call('HDEL', job, 'w', 'pf')
      if reason == 'cancelled' then
        redis.call('HDEL', job, 'a')  -- never run again: its arguments can go now
        drop_staged_args(job)
        ttl = done_ttl
      else
        redis.call('ZADD', failed, now, job_id)  -- kept until requeued or purged
        failed_count = failed_count + 1
        if queues[spec] ~= '' then tally(failed_in, queues[spec]) end
      end
    end
    if by_ref then
      ttl = deliver(job, f[6], client, op, job_id, f[3] or '0', 'ref', kind .. '\n' .. staged, result_ttl, 0, ttl)
    else
      ttl = deliver(job, f[6], client, op, job_id, f[3] or '0', kind, body, result_ttl, publish_max, ttl)
    end
    if ttl and (kind == 'ok' or reason == 'cancelled') then redis.call('PEXPIRE', job, ttl) end
    flags[n] = 1
  else
    flags[n] = 0
  end
end
send_outcomes()  -- before anything else that could stop the script: no job is done without its outcome
-- The counters once per batch (fewer commands in the append-only file).
if done > 0 then redis.call('HINCRBY', stats, 'done', done) end
if failed_count > 0 then redis.call('HINCRBY', stats, 'failed', failed_count) end
for queue, count in pairs(done_in) do redis.call('HINCRBY', stats, 'done:' .. queue, count) end
for queue, count in pairs(failed_in) do redis.call('HINCRBY', stats, 'failed:' .. queue, count) end
return flags
