"""Reads of the paper venue that need two steps (a set, then what it names), as one Lua call
each. Every key is passed in KEYS: all share the venue's hash tag, so one slot on a cluster."""

from __future__ import annotations

# KEYS: the set of open ids, the orders hash. The open orders' JSON (ids are in it).
OPEN_ORDERS = """
local ids, out = redis.call('SMEMBERS', KEYS[1]), {}
for i = 1, #ids, 500 do
  local got = redis.call('HMGET', KEYS[2], unpack(ids, i, math.min(i + 499, #ids)))
  for _, raw in ipairs(got) do
    if raw then out[#out + 1] = raw end
  end
end
return out
"""

# KEYS: the assets set, then balance keys. {the assets set's members, the balances' values}.
BALANCES = """
return {redis.call('SMEMBERS', KEYS[1]), redis.call('MGET', unpack(KEYS, 2))}
"""

# KEYS: a pair's clients hash, the orders hash; ARGV[1]: a client order id. {} if no order
# was accepted with it, else {order id, its JSON or ''}.
BY_CLIENT_ID = """
local id = redis.call('HGET', KEYS[1], ARGV[1])
if not id then return {} end
return {id, redis.call('HGET', KEYS[2], id) or ''}
"""
