--!flags allow-oom
-- requeue_expired.lua: recover the jobs of one worker whose lease expired.
-- KEYS: workers, inflight(worker), worker_info, failed, stats, inbox(worker), parked_children(worker)
-- ARGV: worker_id, now_ms ('' = server time), forget_after_ms, result_ttl_ms, lost_body, lost_error, lost_traceback,
--       job_prefix, spec_prefix, queue_prefix, results_prefix, channel_prefix, result_seq_prefix,
--       Keys.handoff() (5 names), done_ttl_ms, Keys.child_inbox_prefix(worker)
-- Each job the worker was running goes back to the front of its queue, or
-- fails with reason 'lost' once it has used max_attempts (parked workers are
-- woken for those requeued). A job handed to the worker (submit.lua) that is
-- still in its inbox (or a job process's) was never read, so never started: its hand-off charge is
-- refunded -- a worker killed while parked keeps being handed jobs until its
-- lease runs out, and they must not use up attempts (attempts count runs
-- started). Its death still counts ('d', below: the bound for a job whose read
-- a server restart undid). A job claimed ahead whose start was
-- never recorded ('pf') is not charged an attempt -- it may never have run --
-- but every death of a worker holding a job counts ('d'), and at twice
-- max_attempts the job fails 'lost' anyway: a job that kills its worker the
-- moment it starts cannot crash-loop through the prefetch either. The whole sweep of one worker is one
-- script, so a coordinator killed mid-sweep leaves every job either still in
-- the in-flight list or already requeued, never both, never neither; and two
-- coordinators sweeping at once cannot requeue a job twice (the second finds
-- the list empty, or the lease renewed).
-- Poison is dropped, not fatal, so one bad entry cannot stop the sweep of this
-- worker (and the coordinator's of every other) at each pass: an id whose job
-- key is not a hash is removed with the rest of the list; a job whose spec is
-- missing or not a hash fails 'corrupt'; an in-flight key that is not a list
-- is deleted.
-- Returns {requeued, lost, dropped}: dropped counts the in-flight entries that
-- named no job record (and a non-list in-flight key as one).
local workers, inflight, info, failed, stats, inbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local worker_id, now = ARGV[1], now_ms(ARGV[2])
local forget_before = now - tonumber(ARGV[3])
local result_ttl, lost_body, lost_error, lost_tb = tonumber(ARGV[4]), ARGV[5], ARGV[6], ARGV[7]
local job_prefix, spec_prefix, queue_prefix = ARGV[8], ARGV[9], ARGV[10]
local results_prefix, channel_prefix, seq_prefix = ARGV[11], ARGV[12], ARGV[13]
local ho = handoff_keys(ARGV, 14)
local done_ttl = tonumber(ARGV[19])
local child_inbox_prefix = ARGV[20]
-- At most this many job process inboxes are looked at (a garbage concurrency must not stall the server).
local MAX_SLOTS = 4096
local op = {results = results_prefix, seq = seq_prefix, channel = channel_prefix}

local deadline = tonumber(redis.call('ZSCORE', workers, worker_id))
if not deadline or deadline > now then
  return {0, 0, 0}  -- renewed since the caller looked: the worker is alive
end
local requeued, lost, woken = 0, 0, {}
-- It gets no more hand-offs; those it got but never read are in its
-- in-flight list like the rest. Its job processes are no longer listed as
-- parked either (cwredis/worker/parking.py).
unpark(ho, worker_id, split_commas(read_field(info, 'queues')))
-- The ids of the hand-offs it never read: in its own inbox, and in the inboxes
-- of its job processes (submit.lua hands a job to a parked one directly; it
-- is no longer listed once handed one, so each slot's inbox is looked at).
-- Those inboxes go: the worker is gone. (An inbox that is not a list: none.)
local unread = {}
local slots = math.min(tonumber(read_field(info, 'concurrency')) or 0, MAX_SLOTS)
local inboxes = {inbox}
for i = 0, slots - 1 do inboxes[#inboxes + 1] = child_inbox_prefix .. i end
for _, key in ipairs(inboxes) do
  local messages = redis.pcall('LRANGE', key, 0, -1)
  if not messages.err then
    for _, message in ipairs(messages) do
      local job_id = handed_id(message)
      if job_id then unread[job_id] = true end
    end
  end
  if key ~= inbox then redis.call('DEL', key) end
end
redis.call('DEL', KEYS[7])
local ids = redis.pcall('LRANGE', inflight, 0, -1)
local dropped = 0
if ids.err then ids, dropped = {}, 1 end
-- Newest first (claims push on the left): each RPUSH goes to the queue's taking
-- end, so the oldest, pushed last, is taken first -- submission order holds.
for i = 1, #ids do
  local job_id = ids[i]
  local job = job_prefix .. job_id
  local f = read_hash(job, 's', 'w', 'n', 'p', 'g', 'pf', 'd', 'rc', 'cx')
  local spec = f and read_hash(spec_prefix .. (f[4] or ''), 'q', 'm', 'c') or {}
  local running = f and f[1] == 'running' and f[2] == worker_id
  if not f then
    dropped = dropped + 1
  elseif running and f[9] and spec[1] then  -- its cancellation was asked: it ends here, never retried
    if not f[6] then redis.call('HSET', job, 'n', math.max((tonumber(f[3]) or 1) - 1, 0)) end
    end_cancelled(job, f[8], spec[3], op, job_id, f[5] or '0', result_ttl, done_ttl)
  elseif (running or job_state(f[1], f[4]) == 'pending') and spec[1] then
    local max_attempts = tonumber(spec[2]) or 1
    -- HSET, not HINCRBY: a garbage count must not abort the sweep.
    local deaths = 0
    local never_read = running and unread[job_id]
    if never_read then
      redis.call('HSET', job, 'n', math.max((tonumber(f[3]) or 1) - 1, 0))
    end
    if running then
      deaths = (tonumber(f[7]) or 0) + 1
      redis.call('HSET', job, 'd', deaths)
    end
    local charged = running and not never_read and not f[6] and (tonumber(f[3]) or 0) >= max_attempts
    if charged or deaths >= 2 * max_attempts then
      redis.call('HSET', job, 's', 'failed', 'r', 'lost', 'x', lost_error, 'tb', lost_tb)
      redis.call('HDEL', job, 'w')
      redis.call('ZADD', failed, now, job_id)
      redis.call('HINCRBY', stats, 'failed', 1)
      -- The outcome carries no content (the client writes the message: we hold no secret).
      deliver(job, f[8], spec[3], op, job_id, f[5] or '0', 'err', lost_body, result_ttl)
      lost = lost + 1
    else
      redis.call('HDEL', job, 's', 'w', 'pf')  -- no 's': pending (see make_pending)
      redis.call('RPUSH', queue_prefix .. spec[1], job_id)
      tally(woken, spec[1])
      requeued = requeued + 1
    end
  elseif f[1] == 'running' or job_state(f[1], f[4]) == 'pending' then
    -- Its spec expired or is garbage: nothing can run it or hear about it.
    redis.call('HSET', job, 's', 'failed', 'r', 'corrupt', 'x', 'job spec is missing')
    redis.call('ZADD', failed, now, job_id)
  end
end
send_outcomes()  -- before anything else that could stop the script: no job ends without its outcome
redis.call('DEL', inflight, inbox)
wake(ho, woken, now)
if deadline < forget_before then
  -- Long dead: stop sweeping it. (A worker that comes back re-registers on claim.)
  redis.call('ZREM', workers, worker_id)
  redis.call('DEL', info)
end
return {requeued, lost, dropped}
