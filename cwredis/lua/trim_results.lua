--!flags allow-oom
-- trim_results.lua: drop the head of a client's outcome list that the client
-- has read -- and never an entry it has not.
-- KEYS[1]: results(client)      the outcome list (entries "seq\njob_id\ngeneration\nkind\nbody")
-- KEYS[2]: result_seq(client)   the counter numbering its entries
-- ARGV[1]: '1': if this leaves the list empty, delete it and the counter too (a
--          stopping client that has everything delivered leaves nothing behind); else '0'
-- ARGV[2..n+1]: the headers ("seq\njob_id\ngeneration\n") of the n entries the
--          client believes head the list, in list order
-- Removes the longest head of the list whose entries start with those headers,
-- in order. The client works out which entries head the list from their
-- numbers; a server restarted from older data reuses numbers, so each entry is
-- checked here: a mismatch stops the trim there, and the caller reads the list
-- afresh. (Two entries with one header are outcomes of the same job attempt,
-- so either may go once one was delivered.)
-- An entry of kind 'ref' names the key holding its body (complete.lua): the
-- key is deleted with the entry.
-- Returns how many entries were removed.
local results, seq_key = KEYS[1], KEYS[2]
local removed = 0
if #ARGV > 1 then
  local entries = redis.call('LRANGE', results, 0, #ARGV - 2)
  for i, entry in ipairs(entries) do
    local header = ARGV[i + 1]
    if string.sub(entry, 1, #header) ~= header then break end
    removed = i
  end
  if removed > 0 then
    redis.call('LTRIM', results, removed, -1)
    for i = 1, removed do
      local kind_at = #ARGV[i + 1] + 1  -- look at the kind only: an inline entry may be megabytes long
      if string.sub(entries[i], kind_at, kind_at + 3) == 'ref\n' then
        local staged = string.match(entries[i], '^ref\n[^\n]*\n(.+)$', kind_at)
        if staged and string.find(staged, ':stage:', 1, true) then redis.call('DEL', staged) end
      end
    end
  end
end
if ARGV[1] == '1' and redis.call('LLEN', results) == 0 then
  redis.call('DEL', results, seq_key)
end
return removed
