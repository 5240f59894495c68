-- _prelude.lua: prepended to every script by scripts.py (after its '#!lua flags' line).
-- now_ms(arg): the caller's clock when given (tests move it), else the
-- server's. Leases compare times taken on one clock -- the server's -- so
-- skew between worker and coordinator hosts cannot expire a live lease.
local function now_ms(arg)
  if arg and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- read_hash(key, field...): HMGET of a record's fields, or nil when the key
-- holds something other than a hash. Poison in the keyspace (a queue entry
-- naming a key of the wrong type, a spec overwritten with a string) must not
-- stop a script half-way: Redis keeps the writes a script made before an
-- error, so a claim stopped there would leave an id moved to an in-flight
-- list and its worker told nothing, and a sweep stopped there would recover
-- no job of that worker, ever. Scripts read every record they reach through
-- an id with this, and treat nil as garbage: dropped, or the job failed.
local function read_hash(key, ...)
  local fields = redis.pcall('HMGET', key, ...)
  if fields.err then return nil end
  return fields
end

-- read_field(key, field): one field of a record (false if absent), or nil as read_hash.
local function read_field(key, field)
  local fields = read_hash(key, field)
  return fields and fields[1]
end

-- A job's state from its 's' and 'p' (spec) fields as read: a pending job has no 's'
-- field (12 bytes less per queued job, which is mostly its record's bytes), so an
-- absent 's' reads 'pending' when the record names its spec, as every job does from
-- submit on; a record with neither is no job (false). Scripts that make a job
-- pending again HDEL its 's' (make_pending), so a requeued job is as small.
local function job_state(s, p)
  if s then return s end
  return p and 'pending' or false
end

local function make_pending(job)
  redis.call('HDEL', job, 's')
end

-- drop_staged_args(job): with its 'a' field, a job that never runs again loses its
-- large arguments' own key (Keys.staged_args: job .. ':args', written beside
-- submit.lua). For a job whose arguments are in its record there is no such key,
-- and a DEL that deletes nothing is not written to the append-only file.
local function drop_staged_args(job)
  redis.call('DEL', job .. ':args')
end

-- keep_alive(key, ttl_ms): the key lives ttl_ms more, give or take a slack
-- (a tenth of it, at most an hour): PEXPIRE is a write, which goes to the
-- append-only file, so it is sent only when the key has lost more than the
-- slack since the last one; PTTL is a read. A missing key stays missing.
local function keep_alive(key, ttl)
  if redis.call('PTTL', key) < ttl - math.min(3600000, math.floor(ttl / 10)) then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- Hand-off. A worker whose claim found its queues empty parks (claim.lua):
-- parked:<w> holds how many jobs it can start at once (its idle children),
-- idle:<queue> lists it for each queue it serves, and its fetcher blocks on
-- BLMPOP inbox:<w>. A script that queues a job then goes to a parked worker
-- directly: submit.lua claims the new job for it and pushes the job itself,
-- so the worker starts it without a claim round trip; the other paths
-- (retries, promotions, recoveries) push 'wake', and the worker claims.
-- The caller passes the names from Keys.handoff() in ARGV, from index i.
local function handoff_keys(argv, i)
  return {workers = argv[i], idle = argv[i + 1], parked = argv[i + 2], inbox = argv[i + 3],
          inflight = argv[i + 4]}
end

-- The longest-parked live worker of a queue: its id, how many jobs it takes,
-- and when it parked; nil if none. Entries left behind by a worker that
-- claimed since (no parked key) or whose lease ran out are dropped on the way.
-- now: nil reads the server's clock, and only if some worker is parked.
local function pop_parked(ho, queue, now)
  while true do
    local top = redis.call('ZPOPMIN', ho.idle .. queue)
    if not top[1] then return nil end
    now = now or now_ms('')
    local room = tonumber(redis.call('GET', ho.parked .. top[1]))
    local lease = tonumber(redis.call('ZSCORE', ho.workers, top[1]))
    if room and room > 0 and lease and lease > now then
      return top[1], room, top[2]
    end
  end
end

-- Count one more job for queue in counts (for wake below).
local function tally(counts, queue)
  counts[queue] = (counts[queue] or 0) + 1
end

-- Wake parked workers for jobs pushed onto queues other than by submit;
-- counts maps a queue name to how many jobs went there. A woken worker is
-- unparked: it claims now, and parks again if it finds nothing.
local function wake(ho, counts, now)
  for queue, n in pairs(counts) do
    for _ = 1, n do
      local w = pop_parked(ho, queue, now)
      if not w then break end
      redis.call('DEL', ho.parked .. w)
      redis.call('RPUSH', ho.inbox .. w, 'wake')
    end
  end
end

-- Forget a worker's parking (it claims, stops or died): no more hand-offs.
-- queues: the names it parked for.
local function unpark(ho, worker_id, queues)
  redis.call('DEL', ho.parked .. worker_id)
  for _, queue in ipairs(queues) do redis.call('ZREM', ho.idle .. queue, worker_id) end
end

-- A hand-off message: the fields of one claimed job, each as <length>:<bytes>.
local function frame(fields)
  local parts = {}
  for i, f in ipairs(fields) do parts[i] = #f .. ':' .. f end
  return table.concat(parts)
end

-- The job id a hand-off message names (its first field, see frame()); nil for
-- 'wake' and 'x:<id>' (a cancellation), which hand nothing over.
local function handed_id(message)
  if string.sub(message, 1, 2) == 'x:' then return nil end
  local colon = string.find(message, ':', 1, true)
  local length = colon and tonumber(string.sub(message, 1, colon - 1))
  return length and string.sub(message, colon + 1, colon + length)
end

-- An outcome entry, as a client's results list holds it and pub/sub carries it:
-- "seq\njob_id\ngeneration\nkind\nbody" (kind 'ok', 'err', or 'big' for a
-- published header whose body is only in the list). The one place it is
-- spelled in Lua; the client parses it in ClientThread._parse.
local function outcome_header(seq, job_id, generation)
  return seq .. '\n' .. job_id .. '\n' .. generation .. '\n'
end

-- Outcomes wait in the outbox until the loop over jobs ends (send_outcomes), a
-- client's together: one INCRBY numbers them and one RPUSH appends them -- two
-- lines of the append-only file per client and script, not two per outcome
-- (about 85 bytes a job in a map). A client's pending outcomes go out early
-- once they pass OUTBOX_FLUSH_BYTES, so large results are not all held at once.
local OUTBOX_FLUSH_BYTES = 4 * 1024 * 1024
local outbox = {order = {}, by_list = {}}

-- Send one client's pending outcomes: number them (its seq key), append them
-- to its results list (both live result_ttl more), and publish each -- or,
-- when a body is longer than its publish_max (nil: no limit), just its header
-- with kind 'big', so a listening client needs no further round trip; the list
-- stays the truth.
local function send_box(box)
  local n = #box.entries
  if n == 0 then return end
  local last = redis.call('INCRBY', box.seq_key, n)
  keep_alive(box.seq_key, box.ttl)
  local heads, lines = {}, {}
  for i, e in ipairs(box.entries) do
    heads[i] = outcome_header(last - n + i, e[1], e[2])
    lines[i] = heads[i] .. e[3] .. '\n' .. e[4]
  end
  for first = 1, n, 1000 do  -- bounded argument count per call
    redis.call('RPUSH', box.results, unpack(lines, first, math.min(first + 999, n)))
  end
  keep_alive(box.results, box.ttl)
  for i, e in ipairs(box.entries) do
    if not e[5] or #e[4] <= e[5] then
      redis.call('SPUBLISH', box.channel, lines[i])
    else
      redis.call('SPUBLISH', box.channel, heads[i] .. 'big\n')
    end
  end
  box.entries, box.bytes = {}, 0
end

-- Queue an outcome entry for a client (see send_box).
local function push_outcome(results, seq_key, channel, job_id, generation, kind, body, result_ttl, publish_max)
  local box = outbox.by_list[results]
  if not box then
    box = {results = results, seq_key = seq_key, channel = channel, ttl = result_ttl, entries = {}, bytes = 0}
    outbox.by_list[results] = box
    outbox.order[#outbox.order + 1] = box
  end
  box.entries[#box.entries + 1] = {job_id, generation, kind, body, publish_max}
  box.bytes = box.bytes + #body
  if box.bytes >= OUTBOX_FLUSH_BYTES then send_box(box) end
end

-- Send every queued outcome, clients in the order they first got one. Every
-- script that delivers outcomes (deliver, end_cancelled) calls this right
-- after its loop over jobs, before any other command that could fail and stop
-- it (Redis keeps what a stopped script wrote: a job would be done with no
-- outcome sent). Until then (or a client's early send past
-- OUTBOX_FLUSH_BYTES) outcomes wait; the script is one atomic step, so a
-- client sees the same entries, numbered the same, as if each went at once.
local function send_outcomes()
  for _, box in ipairs(outbox.order) do send_box(box) end
  outbox = {order = {}, by_list = {}}
end

-- "a,b,c" -> {"a", "b", "c"}
local function split_commas(text)
  local out = {}
  for part in string.gmatch(text or '', '[^,]+') do out[#out + 1] = part end
  return out
end

-- Key prefixes of client outcome lists (see Keys.outcome_prefixes), from ARGV at index i.
local function outcome_prefixes(argv, i)
  return {results = argv[i], seq = argv[i + 1], channel = argv[i + 2]}
end

-- Hand a job's final outcome to whoever waits for it. A session's job (its
-- 'rc' field lists the clients attached to it) also keeps the outcome in its
-- record ('ro'), for clients that attach later, and lives result_ttl;
-- any other job's outcome goes to `client` ('' : no one). Returns the record's
-- new time to live: result_ttl for a session's job, else `ttl`.
local function deliver(job, route, client, op, job_id, generation, kind, body, result_ttl, publish_max, ttl)
  if route then
    redis.call('HSET', job, 'ro', kind .. '\n' .. body)
    for _, c in ipairs(split_commas(route)) do
      push_outcome(op.results .. c, op.seq .. c, op.channel .. c, job_id, generation, kind, body, result_ttl,
                   publish_max)
    end
    return result_ttl
  end
  if client ~= '' then
    push_outcome(op.results .. client, op.seq .. client, op.channel .. client, job_id, generation, kind, body,
                 result_ttl, publish_max)
  end
  return ttl
end

-- End a job as cancelled (cancel.lua; or a job whose cancellation was asked
-- while it ran, and that came back to a script before its worker stopped it):
-- it never runs again, uses no attempt, is not listed as failed. Its outcome
-- is the content-free marker 'C' (the client writes the message), so no
-- secret is needed here. f_rc, client, generation: as deliver() takes them.
local function end_cancelled(job, f_rc, client, op, job_id, generation, result_ttl, done_ttl)
  redis.call('HSET', job, 's', 'failed', 'r', 'cancelled', 'x', 'CancelledError: the job was cancelled')
  redis.call('HDEL', job, 'a', 'w', 'pf', 'pg')
  drop_staged_args(job)
  local ttl = deliver(job, f_rc, client, op, job_id, generation, 'err', 'C', result_ttl, nil, done_ttl)
  redis.call('PEXPIRE', job, ttl)
end
