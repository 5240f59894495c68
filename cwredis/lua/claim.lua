--!flags allow-oom
-- claim.lua: take up to max_count jobs for a worker and start an attempt on
-- each; park the worker if its queues are empty and a child would sit idle.
-- KEYS: workers, inflight(worker), inbox(worker), parked(worker), queue_1 .. queue_n (priority order)
-- ARGV: worker_id, lease_ms, max_count, job_prefix, now_ms ('' = server time), start_count,
--       park ('1': park if short of start_count), idle_prefix, spec_prefix, then the n queue names
-- The first start_count jobs start at once and are charged an attempt now.
-- The rest are claimed ahead (prefetched, for short jobs): they get their
-- token but are marked 'pf' and charged only when start.lua records that they
-- started -- so a worker that dies holding them does not use up their attempts.
-- A job that was already held by a worker that died ('d') is always charged
-- at claim: it may be what killed it, and must not run uncounted.
-- The worker is unparked first, so no job can be handed to it while it
-- claims; jobs handed to it before (still in its inbox, already in its
-- in-flight list) are returned with the rest and count towards max_count.
-- Ids are moved from a queue a batch at a time: read (LRANGE), pushed onto the
-- in-flight list (one LPUSH), then trimmed off the queue (one LTRIM) -- two
-- entries in the append-only file per batch (the read is none) instead of an
-- LMOVE per job; a batch of one id is one LMOVE.
-- Pushing before trimming keeps every id in a queue or the in-flight list at
-- each step, even if the script stopped half-way (an id in both is taken once:
-- take() skips a job that is no longer pending), so it is always where the
-- coordinator's sweep of this worker finds it. Parking happens in the same step as finding
-- the queues empty, so no job can be queued unseen in between.
-- Returns {claimed, dropped, handed, room}: claimed is a flat list of
-- (id, token, spec, fn, args, attempts, generation) per job, attempts being
-- the number this run has once started, fn the function digest its spec names
-- ('' when the spec is missing or names none: the worker fails the job corrupt); dropped lists queue entries that
-- named no pending job (removed; the worker logs them) -- an id whose key is
-- not a hash among them, so no entry can stop the claim half-way; handed lists the
-- inbox messages (see frame() in the prelude); room is how many jobs the
-- worker is now parked for (0: not parked).
local workers, inflight, inbox, parked = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local worker_id, now = ARGV[1], now_ms(ARGV[5])
local deadline = now + tonumber(ARGV[2])
local max_count, job_prefix, start_count = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[6])
local park, idle_prefix, spec_prefix = ARGV[7] == '1', ARGV[8], ARGV[9]
-- Claiming renews the lease, and re-registers a worker whose lease the
-- coordinator already expired (e.g. one that was SIGSTOPped and continued).
redis.call('ZADD', workers, deadline, worker_id)
redis.call('DEL', parked)
for q = 10, #ARGV do redis.call('ZREM', idle_prefix .. ARGV[q], worker_id) end
local handed = redis.call('LRANGE', inbox, 0, -1)
redis.call('DEL', inbox)
local claimed, dropped, count = {}, {}, 0
local functions = {}  -- spec digest -> the function digest it names: read once per claim
for _, message in ipairs(handed) do
  if message ~= 'wake' and string.sub(message, 1, 2) ~= 'x:' then count = count + 1 end
end

local function take(job_id)
  local job = job_prefix .. job_id
  local f = read_hash(job, 's', 'p', 'f', 'a', 'n', 'k', 'g', 'd')
  if not f or job_state(f[1], f[2]) ~= 'pending' then
    -- Not a job (garbage, or a key of another type), or a stale duplicate of one already taken;
    -- a job cancelled while it waited (cancel.lua leaves its id) goes quietly.
    redis.call('LREM', inflight, 1, job_id)
    if not (f and f[1] == 'failed' and read_field(job, 'r') == 'cancelled') then
      dropped[#dropped + 1] = job_id
    end
    return
  end
  -- tonumber: a garbage counter must not abort the script half-way.
  local attempts = (tonumber(f[5]) or 0) + 1
  local token = (tonumber(f[6]) or 0) + 1
  if count < start_count or f[8] then
    redis.call('HSET', job, 's', 'running', 'w', worker_id, 'n', attempts, 'k', token)
  else
    redis.call('HSET', job, 's', 'running', 'w', worker_id, 'k', token, 'pf', 1)
  end
  -- The function's digest is in the job's spec (a job queued by an older client has its own 'f').
  local spec = f[2] or ''
  if not f[3] and functions[spec] == nil then functions[spec] = read_field(spec_prefix .. spec, 'f') or '' end
  local fn = f[3] or functions[spec]
  local n = #claimed
  claimed[n + 1], claimed[n + 2], claimed[n + 3] = job_id, tostring(token), f[2] or ''
  claimed[n + 4], claimed[n + 5], claimed[n + 6] = fn, f[4] or '', tostring(attempts)
  claimed[n + 7] = f[7] or '0'
  count = count + 1
end

-- Bounded: a queue full of garbage cannot keep the script running long.
local budget = max_count + 100
for q = 5, #KEYS do
  while count < max_count and budget > 0 do
    -- The oldest entries are at the right end; ids[#ids] is the oldest, taken first.
    local ids = redis.call('LRANGE', KEYS[q], -math.min(max_count - count, budget, 1000), -1)
    if #ids == 0 then break end
    local oldest_first = {}
    for k = #ids, 1, -1 do oldest_first[#oldest_first + 1] = ids[k] end
    if #ids == 1 then
      redis.call('LMOVE', KEYS[q], inflight, 'RIGHT', 'LEFT')
    else
      redis.call('LPUSH', inflight, unpack(oldest_first))  -- as LMOVE RIGHT LEFT one by one would leave it
      redis.call('LTRIM', KEYS[q], 0, -(#ids + 1))
    end
    budget = budget - #ids
    for _, job_id in ipairs(oldest_first) do take(job_id) end
  end
end
local room = 0
if park and count < start_count then
  local empty = true
  for q = 5, #KEYS do
    if redis.call('LLEN', KEYS[q]) > 0 then empty = false end
  end
  if empty then
    room = start_count - count
    redis.call('SET', parked, room)
    for q = 10, #ARGV do redis.call('ZADD', idle_prefix .. ARGV[q], now, worker_id) end
  end
end
return {claimed, dropped, handed, room}
