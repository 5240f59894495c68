--!flags allow-oom
-- park.lua: a child of a parked worker recorded its job's outcome itself
-- (see cwredis/outcomes.py): the child is free again, so submit may hand the
-- worker one more job -- if the worker still serves from parking: only when
-- its queues are empty (else its own claim takes what is there).
-- KEYS: parked(worker), queue_1 .. queue_n
-- ARGV: worker_id, idle_prefix, now_ms ('' = server time), then the n queue names
-- One script, so the check of the queues and the parking are one step, as in claim.lua.
-- Returns the worker's room now (0: not parked).
local parked, worker_id, idle_prefix = KEYS[1], ARGV[1], ARGV[2]
for q = 2, #KEYS do
  if redis.call('LLEN', KEYS[q]) > 0 then return 0 end
end
local room = redis.call('INCR', parked)
local now = now_ms(ARGV[3])
for q = 4, #ARGV do redis.call('ZADD', idle_prefix .. ARGV[q], 'NX', now, worker_id) end
return room
