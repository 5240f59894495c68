--!flags
-- submit.lua: make a batch of jobs durable and queue them -- or hand them to
-- parked workers -- in one atomic step.
-- KEYS: queue, spec, fn_blob, env_blob, session_jobs, sessions, job_1 .. job_n
-- ARGV: spec_digest, fn_digest, blob_ttl_ms, queue_name, then Keys.handoff()
--       (5 names), Keys.children_prefix(), attach, session, has_blobs,
--       [if has_blobs: fn_blob, fn_name, env_blob, n, then n spec field/value pairs],
--       then per job: job_id, args_blob ('staged': in the key job_k .. ':args', see below)
-- Returns the number of jobs queued or handed, or -1 (nothing written) when
-- the spec or a blob is missing and the caller did not send it (send it and
-- call again). A job id that already exists is skipped, so a submit retried
-- after a lost reply never queues a job twice.
-- Sessions (attach = the submitting client's id; '' : no session): a
-- session's job ids are derived from the job's key, so an id that exists is
-- the session's job for that key. The caller attaches to it: a job not yet
-- finished adds the caller to the clients its outcome goes to ('rc'), a
-- finished one returns its kept outcome. A new job is listed in session_jobs
-- and starts with rc = the caller; `sessions` notes the session's last activity. The reply is then {queued, attached...},
-- attached holding (job_id, state, generation, outcome) per existing job
-- (outcome '' unless finished) -- all in the step that decided, so no
-- outcome can fall between the look and the attachment.
-- A job handed to a parked worker is claimed for it here, as claim.lua
-- claims a job that starts at once (token 1, attempt 1 charged now: a parked
-- worker has an idle child for each job of its room, so the job starts the
-- moment it is read; charging it later would let a job that kills its worker
-- at once run uncounted). It goes into the worker's in-flight list and its
-- inbox in the same step: if the worker dies before reading it, the
-- coordinator's sweep of that worker requeues it (counting the attempt).
-- If one of the worker's job processes is parked on an inbox of its own
-- (pchildren, see cwredis/worker/parking.py), the job goes there instead of
-- the worker's inbox, popping that registration: one job per registration.
-- No script flags (not 'allow-oom', unlike every other script): while the
-- server is over its maxmemory it refuses this script as a whole, before any
-- of it runs, so a submit at the limit leaves nothing half-queued (the client
-- raises ServerFullError) and the transitions that drain the queues still run.
local queue, spec_key, fn_key, env_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, queue_name = tonumber(ARGV[3]), ARGV[4]
local ho = handoff_keys(ARGV, 5)
local children = ARGV[10]
local attach, session, session_jobs, sessions = ARGV[11], ARGV[12], KEYS[5], KEYS[6]
local route = attach ~= '' and {'rc', attach} or {}
local i = 14
if ARGV[13] == '1' then
  redis.call('HSET', fn_key, 'b', ARGV[14], 'n', ARGV[15])
  redis.call('HSET', env_key, 'b', ARGV[16])
  local n = tonumber(ARGV[17])
  redis.call('HSET', spec_key, unpack(ARGV, 18, 17 + 2 * n))
  i = 18 + 2 * n
elseif redis.call('EXISTS', spec_key) == 0 or redis.call('EXISTS', fn_key) == 0
    or redis.call('EXISTS', env_key) == 0 then
  return -1
end
-- Shared records live as long as the newest job that may still need them.
keep_alive(spec_key, ttl)
keep_alive(fn_key, ttl)
keep_alive(env_key, ttl)
-- The next parked worker is looked up only when a new job needs one: a lone
-- job must not pop a second worker just to put it back (two writes to the
-- append-only file per submit, on a fleet with idle workers).
local worker, room, since
local looked = false
local queued, pending, attached, created = 0, {}, {}, {}
for k = 7, #KEYS do
  local job_id, args = ARGV[i], ARGV[i + 1]
  i = i + 2
  local existing = attach ~= '' and read_hash(KEYS[k], 's', 'g', 'ro', 'rc', 'p')
  local state = existing and job_state(existing[1], existing[5])
  if state then
    local outcome = ''
    if (state == 'done' or state == 'failed') and existing[3] then
      outcome = existing[3]
    elseif state ~= 'done' and state ~= 'failed' then
      local route = existing[4] or ''
      if not string.find(',' .. route .. ',', ',' .. attach .. ',', 1, true) then
        redis.call('HSET', KEYS[k], 'rc', route == '' and attach or route .. ',' .. attach)
      end
    end
    attached[#attached + 1] = {job_id, state, existing[2] or '0', outcome}
  elseif redis.call('EXISTS', KEYS[k]) == 0 then
    if attach ~= '' then created[#created + 1] = job_id end
    -- Large arguments are written beside this script (Scripts.stage_args), with a short life in case
    -- it never ran; args is then the marker job.STAGED_ARGS, and they live as long as the job's function.
    if args == 'staged' then redis.call('PEXPIRE', KEYS[k] .. ':args', ttl) end
    if not looked then
      worker, room, since = pop_parked(ho, queue_name)
      looked = true
    end
    if worker then
      redis.call('HSET', KEYS[k], 's', 'running', 'p', ARGV[1], 'a', args, 'w', worker,
                 'k', 1, 'n', 1, unpack(route))
      redis.call('LPUSH', ho.inflight .. worker, job_id)
      local inbox = redis.call('RPOP', children .. worker) or (ho.inbox .. worker)
      redis.call('RPUSH', inbox, frame({job_id, '1', ARGV[1], ARGV[2], args, '1', '0'}))
      room = room - 1
      if room == 0 then
        redis.call('DEL', ho.parked .. worker)
        worker, looked = nil, false
      end
    else
      -- State (s: absent reads pending, see job_state), attempts (n), token (k) and
      -- generation (g) start absent, read as 0: a queued job's memory is mostly field names.
      -- Its function is named by its spec (the client's spec fields include it), not here.
      redis.call('HSET', KEYS[k], 'p', ARGV[1], 'a', args, unpack(route))
      pending[#pending + 1] = job_id
    end
    queued = queued + 1
  end
end
-- One LPUSH for the batch, in submission order (fewer commands in the append-only file).
for first = 1, #pending, 1000 do  -- bounded argument count per call
  redis.call('LPUSH', queue, unpack(pending, first, math.min(first + 999, #pending)))
end
for first = 1, #created, 1000 do
  redis.call('RPUSH', session_jobs, unpack(created, first, math.min(first + 999, #created)))
end
if attach ~= '' then
  keep_alive(session_jobs, ttl)
  redis.call('ZADD', sessions, now_ms(''), session)
end
if worker then  -- room left: it stays parked, first in line as before
  redis.call('SET', ho.parked .. worker, room)
  redis.call('ZADD', ho.idle .. queue_name, since, worker)
end
if attach ~= '' then return {queued, attached} end
return queued
