"""Balance reservations in Redis: one account's free balance shared by several workers.

``reserve:{account}`` is a HASH, one field per reservation id, each value
``asset|amount|expires_ms|placed_ms|owner`` (``placed_ms`` empty while the reservation's
orders are unsent; amounts are the decimal strings the worker sent). One Lua script reads the
whole ledger, drops expired entries and grants the request only if it fits in the caller's
free-balance snapshot minus what that snapshot cannot reflect (``LedgerEntry.counts_against``):
the check and the write are one atomic step, and the key is one slot, so two workers on a
Redis Cluster cannot both take the same balance.

Lua adds amounts as doubles: a request that fits within 1e-12 of the free figure (a relative
error far below any venue's lot size) is granted, so an exact fit is never refused. The
``available`` figure it answers is rounded to 15 significant digits: advisory only (the
next request is checked again).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from mmops.adapters.redis import keys
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.domain.allocation import ReservationAnswer, ReservationRequest
from mmops.domain.models import ZERO

# KEYS: reserve:{account}
# ARGV: id, asset, amount, free, snapshot_ms, now_ms, ttl_ms, owner → {1|0, available}
_RESERVE = """
local key = KEYS[1]
local id, asset, owner = ARGV[1], ARGV[2], ARGV[8]
local amount, free = tonumber(ARGV[3]), tonumber(ARGV[4])
local snapshot, now, ttl = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local held = 0
local entries = redis.call('HGETALL', key)
for i = 1, #entries, 2 do
  local a, amt, exp, placed, who =
    string.match(entries[i + 1], '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  if a == nil or tonumber(exp) == nil or tonumber(exp) <= now then
    redis.call('HDEL', key, entries[i])
  elseif a == asset and entries[i] ~= id then
    if placed == '' then
      held = held + tonumber(amt)
    elseif who ~= owner and tonumber(placed) >= snapshot then
      held = held + tonumber(amt)
    end
  end
end
local available = free - held
if available < 0 then available = 0 end
local fits = available + 1e-12 * math.max(1, math.abs(free)) >= amount
if fits then
  redis.call('HSET', key, id, asset .. '|' .. ARGV[3] .. '|' .. (now + ttl) .. '||' .. owner)
  if redis.call('PTTL', key) < ttl * 2 then redis.call('PEXPIRE', key, ttl * 2) end
end
return {fits and 1 or 0, string.format('%.15g', available)}
"""

# KEYS: reserve:{account}   ARGV: id, amount, placed_ms, ttl_ms → 1 if kept, 0 if dropped/absent
_PLACED = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
if tonumber(ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local a, amt, exp, placed, who =
  string.match(value, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
if a == nil then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local expires = tonumber(ARGV[3]) + tonumber(ARGV[4])
local kept = a .. '|' .. ARGV[2] .. '|' .. expires .. '|' .. ARGV[3] .. '|' .. who
redis.call('HSET', KEYS[1], ARGV[1], kept)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) * 2 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]) * 2)
end
return 1
"""


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _plain(amount: Decimal) -> str:
    return format(amount, "f")


class BalanceReservations:
    """The ``BalanceReservations`` port on Redis (module docstring)."""

    def __init__(self, redis: Redis) -> None:
        self._r = redis
        self._reserve = redis.register_script(_RESERVE)
        self._placed = redis.register_script(_PLACED)

    @redis_errors
    async def reserve(self, request: ReservationRequest) -> ReservationAnswer:
        """Reserve all of ``request.amount`` or nothing (see ``ReservationRequest``)."""
        if "|" in request.asset or "|" in request.owner:
            raise ValueError(f"asset or owner with '|': {request.asset!r}, {request.owner!r}")
        fits, available = await self._reserve(
            keys=[keys.reservations(request.account)],
            args=[
                request.reservation_id,
                request.asset,
                _plain(request.amount),
                _plain(request.free),
                _ms(request.snapshot),
                _ms(request.now),
                max(1, int(request.ttl.total_seconds() * 1000)),
                request.owner,
            ],
        )
        left = max(ZERO, Decimal(str(available)))
        return ReservationAnswer(bool(int(fits)), min(left, max(request.free, ZERO)))

    @redis_errors
    async def clear(self, account: str) -> None:
        """Forget every reservation of ``account`` (a paper venue reset: its balances start
        anew, and no order of the old venue is left to hold any)."""
        await self._r.delete(keys.reservations(account))

    @redis_errors
    async def placed(
        self, account: str, reservation_id: str, amount: Decimal, at: datetime, ttl: timedelta
    ) -> None:
        """Keep the reservation as ``amount`` placed at ``at``, for ``ttl`` (0 drops it)."""
        await self._placed(
            keys=[keys.reservations(account)],
            args=[reservation_id, _plain(amount), _ms(at), max(1, int(ttl.total_seconds() * 1000))],
        )

    @redis_errors
    async def release(self, account: str, reservation_id: str) -> None:
        await self._r.hdel(keys.reservations(account), reservation_id)
