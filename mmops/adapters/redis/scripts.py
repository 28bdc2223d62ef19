"""Lua shared by the store's scripts: prepended to a script's text, never run alone.

``SPLIT`` splits an argument joined by ``|`` (``codec.joined``) into at most ``parts`` values
(the last one is the rest, ``|`` and all): one argument per record instead of one per value,
as redis-py spends more per argument than per byte. ``REGISTER``
adds keys to the session's key registry (``keys:{S}``) in commands of at most 500 members
(Lua's ``unpack`` has a limit).
"""

from __future__ import annotations

SPLIT = """
local function split(s, parts)
  local out, i = {}, 1
  while true do
    local j = string.find(s, '|', i, true)
    if not j or #out + 1 == parts then
      out[#out + 1] = string.sub(s, i)
      return out
    end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end
"""

REGISTER = """
local function register(registry, names, from)
  for i = from, #names, 500 do
    redis.call('SADD', registry, unpack(names, i, math.min(i + 499, #names)))
  end
end
"""
