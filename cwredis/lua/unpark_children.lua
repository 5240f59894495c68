--!flags allow-oom
-- unpark_children.lua: the worker wants some of its parked job processes
-- back (to give them jobs through their pipes, to reconcile, to stop): each
-- is taken off parked_children, so submit.lua hands it nothing more, and
-- gets a "u" in its inbox, which ends its blocking read.
-- KEYS: parked_children(worker)
-- ARGV: ttl_ms, then the children's inboxes (Keys.child_inbox)
-- One step, so no hand-off falls between the two. The "u" is pushed even when
-- the registration was gone: submit.lua took it, and the job is ahead of the
-- "u" in the inbox (the child reads the job; park.lua clears the stale "u"),
-- or the server lost it (a restart), and the "u" still wakes the child. The
-- inbox expires after ttl_ms, so a stale "u" of a worker that died goes too.
-- Returns how many were still listed.
local children, ttl = KEYS[1], tonumber(ARGV[1])
local listed = 0
for i = 2, #ARGV do
  listed = listed + redis.call('LREM', children, 0, ARGV[i])
  redis.call('RPUSH', ARGV[i], 'u')
  redis.call('PEXPIRE', ARGV[i], ttl)
end
return listed
