--!flags allow-oom
-- cancel.lua: cancel jobs, each in one step.
-- KEYS: delayed
-- ARGV: done_ttl_ms, result_ttl_ms, job_prefix, spec_prefix, inbox_prefix, outcome_prefixes (3 names),
--       stop_running ('1': running jobs are stopped too; '0': only jobs that have not started),
--       then job ids
-- A pending or delayed job ends at once (end_cancelled in the prelude): its
-- id may stay in its queue, where claim.lua skips it; it never runs. A
-- running job (with stop_running) is marked 'cx' and its worker is told
-- through its inbox ('x:' .. id); the worker kills the job's process group
-- and records the cancellation (complete.lua), fenced by the attempt's token
-- like any outcome -- so if the job finishes first, its result is the one
-- outcome, and if the worker dies first, the sweep ends it cancelled.
-- Returns one word per job: 'cancelled', 'stopping' (its worker was told),
-- or the state it was left in ('running' without stop_running, 'done',
-- 'failed', 'unknown').
local delayed = KEYS[1]
local done_ttl, result_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local job_prefix, spec_prefix, inbox_prefix = ARGV[3], ARGV[4], ARGV[5]
local op = outcome_prefixes(ARGV, 6)
local stop_running = ARGV[9] == '1'
local replies = {}
for i = 10, #ARGV do
  local job_id = ARGV[i]
  local job = job_prefix .. job_id
  local f = read_hash(job, 's', 'p', 'w', 'g', 'rc', 'cx') or {}
  local state = f[1]
  if state == 'pending' or state == 'delayed' then
    if state == 'delayed' then redis.call('ZREM', delayed, job_id) end
    local client = read_field(spec_prefix .. (f[2] or ''), 'c') or ''
    end_cancelled(job, f[5], client, op, job_id, f[4] or '0', result_ttl, done_ttl)
    replies[#replies + 1] = 'cancelled'
  elseif state == 'running' and stop_running then
    if not f[6] then
      redis.call('HSET', job, 'cx', 1)
      redis.call('RPUSH', inbox_prefix .. (f[3] or ''), 'x:' .. job_id)
    end
    replies[#replies + 1] = 'stopping'
  else
    replies[#replies + 1] = state or 'unknown'
  end
end
return replies
