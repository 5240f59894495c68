--!flags allow-oom
-- purge_failed.lua: delete failed jobs for good.
-- KEYS: failed
-- ARGV: job_prefix, then job ids (none: every failed job)
-- Named ids are all checked first, so a bad id changes nothing.
-- Returns {n} on success, or {-1, job_id, why}.
local failed, job_prefix = KEYS[1], ARGV[1]
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
if #ids > 0 then
  for _, job_id in ipairs(ids) do
    local f = read_hash(job_prefix .. job_id, 's', 'p')
    if f == nil then return {-1, job_id, 'not a job record (its key holds another type)'} end
    local state = job_state(f[1], f[2])
    if not state then return {-1, job_id, 'unknown job id'} end
    if state ~= 'failed' then return {-1, job_id, 'job is ' .. state .. ', not failed'} end
  end
else
  ids = redis.call('ZRANGE', failed, 0, -1)
end
for _, job_id in ipairs(ids) do
  redis.call('ZREM', failed, job_id)
  redis.call('DEL', job_prefix .. job_id)
  drop_staged_args(job_prefix .. job_id)
end
return {#ids}
