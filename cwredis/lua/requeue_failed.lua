--!flags allow-oom
-- requeue_failed.lua: put failed jobs back on their queues with attempts reset.
-- KEYS: failed
-- ARGV: job_prefix, spec_prefix, queue_prefix, Keys.handoff() (5 names),
--       then job ids (none: every failed job)
-- Named ids are all checked before anything changes, so a bad id changes
-- nothing. The generation counter goes up, so the submitting client can tell
-- the new outcome from the failure it already saw.
-- Returns {n} on success, or {-1, job_id, why} for a named id it refuses.
local failed = KEYS[1]
local job_prefix, spec_prefix, queue_prefix = ARGV[1], ARGV[2], ARGV[3]
local ids = {}
local ho = handoff_keys(ARGV, 4)
for i = 9, #ARGV do ids[#ids + 1] = ARGV[i] end
local named = #ids > 0
if not named then ids = redis.call('ZRANGE', failed, 0, -1) end
local queues, generations = {}, {}
for i, job_id in ipairs(ids) do
  local f = read_hash(job_prefix .. job_id, 's', 'p', 'g')
  if named and not f then return {-1, job_id, 'not a job record (its key holds another type)'} end
  f = f or {}  -- unnamed: left out, like any entry that is not a failed job
  local queue = f[2] and read_field(spec_prefix .. f[2], 'q')
  local state = job_state(f[1], f[2])
  if named and not state then return {-1, job_id, 'unknown job id'} end
  if named and state ~= 'failed' then return {-1, job_id, 'job is ' .. state .. ', not failed'} end
  if named and not queue then return {-1, job_id, 'job spec expired; cannot requeue'} end
  queues[i] = (f[1] == 'failed') and queue or false
  generations[i] = (tonumber(f[3]) or 0) + 1
end
local n, woken = 0, {}
for i, job_id in ipairs(ids) do
  redis.call('ZREM', failed, job_id)
  if queues[i] then
    local job = job_prefix .. job_id
    redis.call('HSET', job, 'n', 0, 'g', generations[i])
    redis.call('HDEL', job, 's', 'r', 'x', 'tb', 'w', 'd', 'pf', 'o', 'rj')  -- no 's': pending
    redis.call('LPUSH', queue_prefix .. queues[i], job_id)
    tally(woken, queues[i])
    n = n + 1
  end
end
wake(ho, woken, now_ms(''))
return {n}
