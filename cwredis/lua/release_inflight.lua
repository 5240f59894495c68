--!flags allow-oom
-- release_inflight.lua: a live worker gives back what its in-flight list holds
-- but it is not running: on a clean exit (everything), or after a reconnect
-- (ids whose claim reply was lost, or that a server restart brought back).
-- KEYS: inflight(worker), workers, worker_info, inbox(worker)
-- ARGV: worker_id, unregister ('1' to also remove the worker), job_prefix,
--       spec_prefix, queue_prefix, Keys.handoff() (5 names), the worker's queue
--       names joined by commas, then the ids the worker is really running (kept)
-- A job this worker had claimed gets its attempt refunded (it never started).
-- The worker is unparked and its inbox emptied: jobs handed to it and not
-- yet read are in the in-flight list, and go back with the rest. One script,
-- so the ids move from the in-flight list to their queues all at once
-- (parked workers are woken for them).
-- A worker that stays (not unregister) also gets a 'wake' in its own inbox,
-- in the same step: being unparked here, it is woken by no one else, and its
-- fetcher may be blocked on that inbox -- it would wait out its blocking read
-- while the jobs given back (and any queued since) sit in the queue. Woken,
-- it claims at once, and parks afresh if there is nothing.
-- Returns the number of jobs given back.
local inflight, workers, info, inbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local worker_id, unregister = ARGV[1], ARGV[2] == '1'
local job_prefix, spec_prefix, queue_prefix = ARGV[3], ARGV[4], ARGV[5]
local ho = handoff_keys(ARGV, 6)
local keep = {}
for i = 12, #ARGV do keep[ARGV[i]] = true end
local released, woken = 0, {}
unpark(ho, worker_id, split_commas(ARGV[11]))
redis.call('DEL', inbox)
local ids = redis.call('LRANGE', inflight, 0, -1)
-- Newest first (claims push on the left): each RPUSH goes to the queue's taking
-- end, so the oldest, pushed last, is taken first -- submission order holds.
for i = 1, #ids do
  local job_id = ids[i]
  if not keep[job_id] then
    local job = job_prefix .. job_id
    -- An id whose job or spec is not a hash (poison) is dropped like one naming no job.
    local f = read_hash(job, 's', 'w', 'n', 'p', 'pf')
    local queue = f and read_field(spec_prefix .. (f[4] or ''), 'q')
    redis.call('LREM', inflight, 1, job_id)
    local state = f and job_state(f[1], f[4])
    if queue and (state == 'pending' or (state == 'running' and f[2] == worker_id)) then
      if state == 'running' and f[5] then  -- claimed ahead, never charged
        redis.call('HDEL', job, 's', 'w', 'pf')  -- no 's': pending (see make_pending)
      elseif state == 'running' then
        redis.call('HSET', job, 'n', math.max((tonumber(f[3]) or 1) - 1, 0))
        redis.call('HDEL', job, 's', 'w')
      end
      redis.call('RPUSH', queue_prefix .. queue, job_id)
      tally(woken, queue)
      released = released + 1
    end
  end
end
wake(ho, woken, now_ms(''))
if unregister then
  redis.call('ZREM', workers, worker_id)
  redis.call('DEL', info)
else
  redis.call('RPUSH', inbox, 'wake')
end
return released
