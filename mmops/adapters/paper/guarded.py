"""The paper venue's changes as compare-and-set: usually one Lua call each.

A change names the values it depends on (``Read``: a string key, a hash field, a client id's
holder, a set membership), computes in Python from them (``Decimal`` never leaves Python) the
writes and its answer, and sends reads, the values it computed from and the writes to
``GUARDED``. The script applies the writes only if every value is still what the computation
saw, atomically; otherwise it writes nothing and returns the current values, and the change is
computed again from those. So the outcome is the one a transaction reading at the moment of
the write would give, as with WATCH/MULTI, without WATCH/MULTI's 4-6 round trips.

A handle remembers the values it last saw or wrote (``Guard.seen``) and computes from them
first: a change on state no other process touched meanwhile costs one round trip. A value
never seen is taken as empty (a missing key, a free client id), which the script corrects when
it is wrong. A change that fails (raises) on remembered values is checked against the current
ones before the error is reported.

Everything travels as one argument of netstrings (``<bytes>:<text>``) besides the keys:
redis-py's cost grows with the number of arguments, and the values (client order ids, JSON)
may contain any character.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import groupby
from typing import Literal, NamedTuple, TypeVar, cast

from mmops.adapters.redis.client import Redis
from mmops.errors import ExchangeUnavailable, MmopsError

T = TypeVar("T")
MAX_ATTEMPTS = 50
BACKOFF_S = 0.0005  # the first wait after a lost race is up to this, doubling after each
BACKOFF_CAP_S = 0.05
SEEN_LIMIT = 20_000  # values a handle remembers before it starts afresh (bounds its memory)

# KEYS: every key read or written. ARGV[1]: netstrings: the number of read groups, the groups
# (a head ``op|key|count[|via]`` then ``count`` fields), the expected value of each value read,
# then the writes (a head ``COMMAND|key|count`` then ``count`` arguments). Key numbers index
# KEYS. Returns {} once written, else the current values (a missing one as '').
GUARDED = """
local A, i, s = {}, 1, ARGV[1]
while i <= #s do
  local colon = string.find(s, ':', i, true)
  local n = tonumber(string.sub(s, i, colon - 1))
  A[#A + 1] = string.sub(s, colon + 1, colon + n)
  i = colon + n + 1
end
local values, a = {}, 2
for _ = 1, tonumber(A[1]) do
  local op, k, n, via = string.match(A[a], '^(%a+)|(%d+)|(%d+)|?(%d*)$')
  local key, count = KEYS[tonumber(k)], tonumber(n)
  if op == 'get' then
    values[#values + 1] = redis.call('GET', key) or ''
  else
    local fields = {unpack(A, a + 1, a + count)}
    if op == 'member' then
      for _, m in ipairs(fields) do
        values[#values + 1] = redis.call('SISMEMBER', key, m) == 1 and '1' or ''
      end
    else
      local got = redis.call('HMGET', key, unpack(fields))
      for j = 1, count do
        local v = got[j] or ''
        if op == 'held' and v ~= '' and via ~= ''
            and redis.call('SISMEMBER', KEYS[tonumber(via)], v) == 0 then
          v = ''
        end
        values[#values + 1] = v
      end
    end
  end
  a = a + count + 1
end
for j = 1, #values do
  if A[a + j - 1] ~= values[j] then return values end
end
a = a + #values
while a <= #A do
  local command, k, n = string.match(A[a], '^(%a+)|(%d+)|(%d+)$')
  local count = tonumber(n)
  redis.call(command, KEYS[tonumber(k)], unpack(A, a + 1, a + count))
  a = a + count + 1
end
return {}
"""


class Read(NamedTuple):
    """A value a change depends on, '' when missing.

    ``get``: a string key. ``hget``: a hash field. ``held``: the order holding a client id
    (``key`` the clients hash, ``field`` the id): the order the hash names, but '' when
    ``via`` (the set of open orders) is given and the order is not in it. ``member``: '1' if
    ``field`` is in the set ``key``.

    A named tuple, not a dataclass: every change hashes and compares a few of these per order
    (as keys of the values it reads and of ``Guard.seen``), which a tuple does in C.
    """

    op: Literal["get", "hget", "held", "member"]
    key: str
    field: str = ""
    via: str = ""


class Write(NamedTuple):
    command: Literal["SET", "HSET", "SADD", "SREM"]
    key: str
    args: tuple[str, ...]


Values = Mapping[Read, str]
Body = Callable[[Values], tuple[T, Sequence[Write]]]


class Guard:
    """Runs a venue handle's changes through GUARDED, remembering the values it saw."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(GUARDED)
        self.seen: dict[Read, str] = {}
        self._jitter = random.Random()  # noqa: S311 - retry timing, not crypto nor the venue's draws

    async def run(self, reads: Sequence[Read], body: Body[T]) -> T:
        """``body`` computes (answer, writes) from the values of ``reads``; returns the answer
        of the computation whose writes were applied. ``body`` must be pure: it may run
        several times. An MmopsError it raises is reported once the values it saw are known
        to be current."""
        values: Values = {r: self.seen.get(r, "") for r in reads}
        current = False  # whether ``values`` came from Redis in this call
        for attempt in range(MAX_ATTEMPTS):
            try:
                answer, writes = body(values)
            except MmopsError:
                if current or (latest := await self._apply(reads, values, ())) is None:
                    raise
                values, current = latest, True
                continue
            if current and not writes:
                return answer
            if (latest := await self._apply(reads, values, writes)) is None:
                return answer
            if current:  # lost to another writer on values just read: real contention
                await self._back_off(attempt)
            values, current = latest, True
        raise ExchangeUnavailable("paper venue busy: too many concurrent changes, try again")

    async def _back_off(self, attempt: int) -> None:
        """Wait a random while, longer after each loss (at most BACKOFF_CAP_S): a handle
        that just wrote knows the values it wrote and would otherwise win every race against
        one that must read them first, until the loser ran out of attempts."""
        await asyncio.sleep(self._jitter.uniform(0, min(BACKOFF_S * 2**attempt, BACKOFF_CAP_S)))

    def note(self, values: Values) -> None:
        """Remember values read elsewhere (they are checked when a change uses them)."""
        if len(self.seen) > SEEN_LIMIT:
            self.seen.clear()
        self.seen.update(values)

    def forget(self) -> None:
        self.seen.clear()

    async def _apply(
        self, reads: Sequence[Read], values: Values, writes: Sequence[Write]
    ) -> Values | None:
        """None once written (the values were current), else the current values."""
        keys: dict[str, int] = {}

        def number(key: str) -> int:
            return keys.setdefault(key, len(keys) + 1)

        items: list[str] = []
        groups = 0
        for (op, key, via), group in groupby(reads, lambda r: (r.op, r.key, r.via)):
            fields = [r.field for r in group]
            if op == "get":
                items += [f"get|{number(key)}|0"] * len(fields)
                groups += len(fields)
                continue
            head = f"{op}|{number(key)}|{len(fields)}" + (f"|{number(via)}" if via else "")
            items += [head, *fields]
            groups += 1
        items += [values[r] for r in reads]
        for w in writes:
            items += [f"{w.command}|{number(w.key)}|{len(w.args)}", *w.args]
        reply = await self._script(keys=list(keys), args=[_netstrings([str(groups), *items])])
        if not reply:
            self._remember(values, writes)
            return None
        return dict(zip(reads, cast(list[str], reply), strict=True))

    def _remember(self, values: Values, writes: Iterable[Write]) -> None:
        """Values read and written, as a later change reads them: a holder or a membership is
        always checked afresh (guessed free), so neither is kept."""
        self.note({r: v for r, v in values.items() if r.op in ("get", "hget")})
        holders = {r.key for r in values if r.op == "held"}
        for w in writes:
            if w.command == "SET":
                self.seen[Read("get", w.key)] = w.args[0]
            elif w.command == "HSET" and w.key not in holders:
                pairs = zip(w.args[::2], w.args[1::2], strict=True)
                self.seen.update((Read("hget", w.key, f), v) for f, v in pairs)


def _netstrings(items: Sequence[str]) -> bytes:
    """Items as ``<bytes>:<text>``, encoded as the client encodes (UTF-8, and back to the
    original bytes any text it decoded with ``surrogateescape``). Usually all ASCII, seen in
    one look: then each item's length in characters is its length in bytes."""
    if "".join(items).isascii():
        return "".join([f"{len(s)}:{s}" for s in items]).encode()
    text = "".join([f"{len(s) if s.isascii() else len(_utf8(s))}:{s}" for s in items])
    return _utf8(text)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")
