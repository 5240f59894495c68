--!flags allow-oom
-- requeue.lua: give back jobs a worker still owns, each fenced by its token.
-- KEYS: inflight(worker), delayed, then per job: job, queue
-- ARGV: now_ms ('' = server time), Keys.handoff() (5 names), then per job:
--       job_id, token, mode, delay_ms, queue_name
-- mode 'retry': the attempt counted (it timed out); the job waits in the
--   delayed set for delay_ms (or goes straight back if delay_ms is 0).
-- mode 'release': the worker is stopping hard; the attempt is refunded and the
--   job goes to the front of its queue at once (a parked worker is woken).
-- Returns one flag per job: 1 requeued, 0 refused (not ours any more).
local inflight, delayed, now = KEYS[1], KEYS[2], now_ms(ARGV[1])
local ho = handoff_keys(ARGV, 2)
local flags, a, n, woken = {}, 7, 0, {}
for k = 3, #KEYS, 2 do
  local job, queue = KEYS[k], KEYS[k + 1]
  local job_id, token, mode, due = ARGV[a], ARGV[a + 1], ARGV[a + 2], now + tonumber(ARGV[a + 3])
  local queue_name = ARGV[a + 4]
  a = a + 5
  n = n + 1
  local f = read_hash(job, 's', 'k', 'n', 'pf') or {}  -- not a hash: refused, like a lost lease
  if f[1] == 'running' and f[2] == token then
    redis.call('LREM', inflight, -1, job_id)  -- from the tail: the oldest taken are there
    redis.call('HDEL', job, 'w', 'pf')
    if mode == 'release' and not f[4] then  -- a claimed-ahead job was never charged
      redis.call('HSET', job, 'n', math.max((tonumber(f[3]) or 1) - 1, 0))
    elseif mode == 'retry' and f[4] then  -- it ran (and timed out) before its start was recorded
      redis.call('HSET', job, 'n', (tonumber(f[3]) or 0) + 1)
    end
    if mode == 'retry' and due > now then
      redis.call('HSET', job, 's', 'delayed')
      redis.call('ZADD', delayed, due, job_id)
    else
      redis.call('HSET', job, 's', 'pending')
      redis.call('RPUSH', queue, job_id)
      tally(woken, queue_name)
    end
    flags[n] = 1
  else
    flags[n] = 0
  end
end
wake(ho, woken, now)
return flags
