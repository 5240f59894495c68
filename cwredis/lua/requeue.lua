--!flags allow-oom
-- requeue.lua: give back jobs a worker still owns, each fenced by its token.
-- KEYS: inflight(worker), delayed, failed, stats, then per job: job, queue
-- ARGV: now_ms ('' = server time), Keys.handoff() (5 names), result_ttl_ms, done_ttl_ms,
--       outcome_prefixes (3 names), worker_id, then per job:
--       job_id, token, mode, delay_ms, queue_name, limit, client, body, error
-- mode 'retry': the attempt counted (it timed out); the job waits in the
--   delayed set for delay_ms (or goes straight back if delay_ms is 0).
-- mode 'release': the worker is stopping hard; the attempt is refunded and the
--   job goes to the front of its queue at once (a parked worker is woken).
-- mode 'reject': the worker refused the job's signature (a worker with the
--   wrong secret, or a job altered by someone without it). Not an attempt:
--   counted in 'rj', and the job goes to the back of its queue, so the
--   worker takes the others next (a worker that rejects 3 in a row stops
--   taking jobs: with jobs to spare, a misconfigured worker fails none).
--   The limit-th rejection (the job's max_attempts) fails the job 'rejected'
--   (error: `error`) with `body` as the outcome sent to `client` ('' : none),
--   so a job no worker can verify ends instead of circling for ever.
-- limit, body and error are '' for the other modes.
-- A job whose cancellation was asked while it ran ('cx', see cancel.lua)
-- ends cancelled instead, whatever the mode: it is never retried.
-- Returns one flag per job: 1 requeued, 2 ended (failed rejected, or cancelled), 0 refused (not ours any more).
-- Atomic per call: each job's state, lists and outcome change together.
local inflight, delayed, failed, stats = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = now_ms(ARGV[1])
local ho = handoff_keys(ARGV, 2)
local result_ttl, done_ttl, op = tonumber(ARGV[7]), tonumber(ARGV[8]), outcome_prefixes(ARGV, 9)
local worker_id = ARGV[12]
local flags, a, n, woken, failed_count = {}, 13, 0, {}, 0
for k = 5, #KEYS, 2 do
  local job, queue = KEYS[k], KEYS[k + 1]
  local job_id, token, mode, due = ARGV[a], ARGV[a + 1], ARGV[a + 2], now + tonumber(ARGV[a + 3])
  local queue_name, limit, client, body, err = ARGV[a + 4], tonumber(ARGV[a + 5]), ARGV[a + 6], ARGV[a + 7],
                                               ARGV[a + 8]
  a = a + 9
  n = n + 1
  local f = read_hash(job, 's', 'k', 'n', 'pf', 'rj', 'g', 'rc', 'cx', 'w') or {}  -- not a hash: refused
  local ours = f[1] == 'running' and f[2] == token and f[9] == worker_id  -- token and holder: see complete.lua
  if ours and f[8] then
    redis.call('LREM', inflight, -1, job_id)
    if not f[4] then redis.call('HSET', job, 'n', math.max((tonumber(f[3]) or 1) - 1, 0)) end
    end_cancelled(job, f[7], client, op, job_id, f[6] or '0', result_ttl, done_ttl)
    flags[n] = 2
  elseif ours then
    redis.call('LREM', inflight, -1, job_id)  -- from the tail: the oldest taken are there
    redis.call('HDEL', job, 'w', 'pf')
    local refund = (mode == 'release' or mode == 'reject') and not f[4]  -- a claimed-ahead job was never charged
    if refund then
      redis.call('HSET', job, 'n', math.max((tonumber(f[3]) or 1) - 1, 0))
    elseif mode == 'retry' and f[4] then  -- it ran (and timed out) before its start was recorded
      redis.call('HSET', job, 'n', (tonumber(f[3]) or 0) + 1)
    end
    local rejections = (tonumber(f[5]) or 0) + 1
    if mode == 'reject' then redis.call('HSET', job, 'rj', rejections) end
    if mode == 'reject' and rejections >= (limit or 1) then
      redis.call('HSET', job, 's', 'failed', 'r', 'rejected', 'x', err, 'tb', err)
      redis.call('ZADD', failed, now, job_id)
      failed_count = failed_count + 1
      deliver(job, f[7], client, op, job_id, f[6] or '0', 'err', body, result_ttl)
      flags[n] = 2
    elseif mode == 'retry' and due > now then
      redis.call('HSET', job, 's', 'delayed')
      redis.call('ZADD', delayed, due, job_id)
      flags[n] = 1
    elseif mode == 'reject' then
      make_pending(job)
      redis.call('LPUSH', queue, job_id)  -- the back: taken after the jobs waiting now
      tally(woken, queue_name)
      flags[n] = 1
    else
      make_pending(job)
      redis.call('RPUSH', queue, job_id)
      tally(woken, queue_name)
      flags[n] = 1
    end
  else
    flags[n] = 0
  end
end
send_outcomes()  -- before anything else that could stop the script: no job ends without its outcome
if failed_count > 0 then redis.call('HINCRBY', stats, 'failed', failed_count) end
wake(ho, woken, now)
return flags
