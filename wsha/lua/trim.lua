-- A library, not a script: prepended to the scripts that name it in a
-- "-- uses: trim" line (see wsha/lua/__init__.py).
--
-- Trim a stream to exactly max entries (usually one) and remember the newest
-- id removed in marker (expiring after ttl seconds, if given), so that a
-- later resume from before it can be told messages were lost.
local function trim_exactly(stream, max, marker, ttl)
  local over = redis.call('XLEN', stream) - tonumber(max)
  if over > 0 then
    local gone = redis.call('XRANGE', stream, '-', '+', 'COUNT', over)
    redis.call('XTRIM', stream, 'MAXLEN', max)
    if ttl then
      redis.call('SET', marker, gone[#gone][1], 'EX', ttl)
    else
      redis.call('SET', marker, gone[#gone][1])
    end
  end
end
