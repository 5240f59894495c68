--!flags allow-oom
-- park.lua: a child of a parked worker recorded its job's outcome itself
-- (see cwredis/outcomes.py): the child is free again, so submit may hand the
-- worker one more job -- if the worker still serves from parking: only when
-- its queues are empty (else its own claim takes what is there).
-- KEYS: parked(worker), parked_children(worker), workers, config, queue_1 .. queue_n
-- ARGV: worker_id, idle_prefix, now_ms ('' = server time), child_inbox ('' = the child does not park),
--       then the n queue names
-- With child_inbox, the child parks on that inbox of its own in the same
-- step (cwredis/worker/parking.py): it is listed in parked_children, where
-- submit.lua pops it to hand it the next job directly. Its inbox is emptied
-- first: only a stale "u" (an unpark that crossed a hand-off) can be there.
-- One script, so the check of the queues and the parking are one step, as in claim.lua.
-- Returns {room, lease_left_ms}: the worker's room now (0: not parked; the
-- child did not park either), and how long its lease holds at least from this
-- step (0 if it has none): a hand-off the child reads within that time since
-- it sent this was read while the lease held, so it cannot have been requeued
-- meanwhile; one read later (was the process frozen?) it confirms first
-- (cwredis/worker/child_parking.py). At most the coordinator's lease timeout
-- (config): a renewal may set a deadline sooner than the one read here (the
-- worker's first renewal after the coordinator shortened the lease), but,
-- while that setting stays as read here, never sooner than one lease timeout
-- after this step.
local parked, children, workers, settings = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local worker_id, idle_prefix, child_inbox = ARGV[1], ARGV[2], ARGV[4]
for q = 5, #KEYS do
  if redis.call('LLEN', KEYS[q]) > 0 then return {0, 0} end
end
local room = redis.call('INCR', parked)
local now = now_ms(ARGV[3])
local lease = tonumber(redis.call('ZSCORE', workers, worker_id)) or now
for q = 5, #ARGV do redis.call('ZADD', idle_prefix .. ARGV[q], 'NX', now, worker_id) end
if child_inbox ~= '' then
  redis.call('DEL', child_inbox)
  redis.call('LREM', children, 0, child_inbox)
  redis.call('LPUSH', children, child_inbox)
end
local lease_left = math.max(0, lease - now)
local timeout = tonumber(read_field(settings, 'lease_ms'))
if timeout then lease_left = math.min(lease_left, timeout) end
return {room, lease_left}
