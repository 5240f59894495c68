--!flags allow-oom
-- promote.lua: move delayed jobs whose time has come to the front of their queue.
-- KEYS: delayed
-- ARGV: now_ms ('' = server time), limit, job_prefix, spec_prefix, queue_prefix, Keys.handoff() (5 names)
-- Parked workers are woken for the promoted jobs.
-- ZREM and RPUSH happen in one script, so a job is always in exactly one of
-- the two; two coordinators promoting at once cannot double it.
-- Returns the number promoted.
local delayed = KEYS[1]
local job_prefix, spec_prefix, queue_prefix = ARGV[3], ARGV[4], ARGV[5]
local ho, now = handoff_keys(ARGV, 6), now_ms(ARGV[1])
local ids = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local promoted, woken = 0, {}
for _, job_id in ipairs(ids) do
  redis.call('ZREM', delayed, job_id)
  local job = job_prefix .. job_id
  -- A job or spec that is not a hash (poison) leaves the delayed set like one that is no longer delayed.
  local f = read_hash(job, 's', 'p') or {}
  local queue = f[1] == 'delayed' and read_field(spec_prefix .. (f[2] or ''), 'q')
  if queue then
    make_pending(job)
    redis.call('RPUSH', queue_prefix .. queue, job_id)
    tally(woken, queue)
    promoted = promoted + 1
  end
end
wake(ho, woken, now)
return promoted
