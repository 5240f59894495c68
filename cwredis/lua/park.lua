--!flags allow-oom
-- park.lua: a child of a parked worker recorded its job's outcome itself
-- (see cwredis/outcomes.py): the child is free again, so submit may hand the
-- worker one more job -- if the worker still serves from parking: only when
-- its queues are empty (else its own claim takes what is there).
-- KEYS: parked(worker), parked_children(worker), workers, queue_1 .. queue_n
-- ARGV: worker_id, idle_prefix, now_ms ('' = server time), child_inbox ('' = the child does not park),
--       then the n queue names
-- With child_inbox, the child parks on that inbox of its own in the same
-- step (cwredis/worker/parking.py): it is listed in parked_children, where
-- submit.lua pops it to hand it the next job directly. Its inbox is emptied
-- first: only a stale "u" (an unpark that crossed a hand-off) can be there.
-- One script, so the check of the queues and the parking are one step, as in claim.lua.
-- Returns {room, lease_left_ms}: the worker's room now (0: not parked; the
-- child did not park either), and how long its lease still runs from this
-- step (0 if it has none): a hand-off the child reads within that time (and
-- within the lease timeout: a renewal may set a sooner deadline) since it sent
-- this was read while the lease held, so it cannot have been requeued
-- meanwhile; one read later (was the process frozen?) it confirms first
-- (cwredis/worker/child_parking.py).
local parked, children, workers = KEYS[1], KEYS[2], KEYS[3]
local worker_id, idle_prefix, child_inbox = ARGV[1], ARGV[2], ARGV[4]
for q = 4, #KEYS do
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
return {room, math.max(0, lease - now)}
