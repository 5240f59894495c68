--!flags allow-oom
-- cancel.lua: cancel jobs, each in one step.
-- KEYS: delayed
-- ARGV: done_ttl_ms, result_ttl_ms, job_prefix, spec_prefix, inbox_prefix, outcome_prefixes (3 names),
--       stop_running ('1': running jobs are stopped too; '0': only jobs that have not started),
--       queue_prefix, then job ids
-- A pending or delayed job ends at once (end_cancelled in the prelude) and
-- leaves its queue (claim.lua would skip it anyway: it never runs). Ids are
-- taken out per queue, after the loop: one LREM each for a few, else one
-- pass rewriting the queue without them, so cancelling thousands costs one
-- pass over the queue, not one per job. A
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
local stop_running, queue_prefix = ARGV[9] == '1', ARGV[10]
local replies, leaving = {}, {}  -- leaving: queue name -> {id = true}
for i = 11, #ARGV do
  local job_id = ARGV[i]
  local job = job_prefix .. job_id
  local f = read_hash(job, 's', 'p', 'w', 'g', 'rc', 'cx') or {}
  local state = job_state(f[1], f[2])
  if state == 'pending' or state == 'delayed' then
    if state == 'delayed' then redis.call('ZREM', delayed, job_id) end
    local spec = read_hash(spec_prefix .. (f[2] or ''), 'c', 'q') or {}
    end_cancelled(job, f[5], spec[1] or '', op, job_id, f[4] or '0', result_ttl, done_ttl)
    if state == 'pending' and spec[2] then
      leaving[spec[2]] = leaving[spec[2]] or {}
      leaving[spec[2]][job_id] = true
    end
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
send_outcomes()  -- before anything else that could stop the script: no job ends without its outcome
for queue_name, ids in pairs(leaving) do
  local queue, few = queue_prefix .. queue_name, {}
  for job_id in pairs(ids) do few[#few + 1] = job_id end
  if #few <= 16 then
    for _, job_id in ipairs(few) do redis.call('LREM', queue, 1, job_id) end
  else
    local kept = {}
    for _, job_id in ipairs(redis.call('LRANGE', queue, 0, -1)) do
      if not ids[job_id] then kept[#kept + 1] = job_id end
    end
    redis.call('DEL', queue)
    for first = 1, #kept, 1000 do
      redis.call('RPUSH', queue, unpack(kept, first, math.min(first + 999, #kept)))
    end
  end
end
return replies
