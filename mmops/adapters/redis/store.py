"""The one writer API over Redis: sessions, orders, fills and positions.

Layout and field names are in docs/REDIS_SCHEMA.md. Multi-key updates run as Lua scripts on keys
that share the session's hash tag, so each is atomic on a single server and on a cluster.
Bulk reads are pipelined in chunks; a record that does not parse is returned as a
:class:`~mmops.errors.BadRecordError` beside the good ones, so one bad record never hides the rest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

from mmops import logs
from mmops.adapters.redis import codec, keys, scripts
from mmops.adapters.redis.client import Redis, redis_errors, scan_slot
from mmops.adapters.redis.events import publish_fill
from mmops.domain.models import (
    ZERO,
    Fill,
    Order,
    Position,
    Session,
    SessionStatus,
    Side,
)
from mmops.domain.records import (
    Coverage,
    Fence,
    ReadResult,
    SessionLease,
    TakeProfitRecord,
    TpStatus,
)
from mmops.errors import BadRecordError, LockLost, StoreUnavailable

T = TypeVar("T")

PIPELINE_CHUNK = 500  # commands (or keys of one script call) per round trip on bulk reads
COVERAGE_CHUNK = 200  # take-profits recorded per script call
_TAKE_PROFIT_NAMES = codec.joined(codec.TAKE_PROFIT_FIELDS)
SCAN_COUNT = 1000

log = logs.get_logger("mmops.store")


class SessionStore:
    """Live state of sessions: ``session:{S}``, its key registry ``keys:{S}`` and the
    ``sessions`` index."""

    def __init__(self, redis: Redis) -> None:
        self._r = redis

    @redis_errors
    async def save(self, s: Session) -> None:
        """Write the session hash and mark its registry complete (the session's own key in
        it: every key of the session is registered from now on) in one MULTI on the session's
        slot; then index it in ``sessions``, a key of no session, in a command of its own."""
        mapping: dict[Any, Any] = codec.session_to_fields(s)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(keys.session(s.id), mapping=mapping)
            pipe.sadd(keys.registry(s.id), keys.session(s.id))
            await pipe.execute()
        await self._r.zadd(keys.SESSIONS_INDEX, {s.id: s.started_at.timestamp()})

    @redis_errors
    async def get(self, session_id: str) -> Session | None:
        """The session, or None if unknown. Raises BadRecordError if it does not parse."""
        key = keys.session(session_id)
        fields = cast(dict[str, str], await self._r.hgetall(key))
        if not fields:
            return None
        return codec.decode(key, fields, codec.session_from_fields)

    @redis_errors
    async def set_status(self, session_id: str, status: SessionStatus) -> None:
        await self._r.hset(keys.session(session_id), "status", status.value)

    @redis_errors
    async def end(self, session_id: str, ended_at: datetime) -> None:
        await self._r.hset(
            keys.session(session_id),
            mapping={"status": SessionStatus.ENDED.value, "ended_at": codec.iso(ended_at)},
        )

    @redis_errors
    async def delete_all(self, session_id: str) -> int:
        """Delete every key of the session (the demo replaces its previous run with this)."""
        count = 0
        names = await self._key_names(session_id)
        for start in range(0, len(names), PIPELINE_CHUNK):
            count += int(await self._r.delete(*names[start : start + PIPELINE_CHUNK]))
        await self._r.zrem(keys.SESSIONS_INDEX, session_id)
        return count

    @redis_errors
    async def expire_all(self, session_id: str, seconds: int) -> int:
        """Give every key of the session a time to live (retention after migration)."""
        count = 0
        names = await self._key_names(session_id)
        for start in range(0, len(names), PIPELINE_CHUNK):
            async with self._r.pipeline(transaction=False) as pipe:
                for name in names[start : start + PIPELINE_CHUNK]:
                    pipe.expire(name, seconds)
                count += sum(bool(done) for done in await pipe.execute())
        return count

    async def _key_names(self, session_id: str) -> list[str]:
        """The session's keys: those of its registry and those with fixed names. A session
        saved before the registry existed (its registry lacks ``session:{S}``) may have keys
        written before it too: those are found by SCAN, the one SCAN left (on a cluster, of
        the one node that holds the session's slot)."""
        registered = cast(set[str], await self._r.smembers(keys.registry(session_id)))
        names = set(registered) | set(keys.fixed(session_id))
        if keys.session(session_id) not in registered:
            names |= await scan_slot(
                self._r, keys.session(session_id), keys.session_pattern(session_id)
            )
        return sorted(names)

    @redis_errors
    async def ids(self) -> list[str]:
        return cast(list[str], await self._r.zrange(keys.SESSIONS_INDEX, 0, -1))


class _MigrationReads:
    """How migration reads one kind of record (a subclass names its per-pair hash and layout):
    TSV lines in chunks, and the stored text of some by their record keys."""

    _r: Redis
    _hash: Callable[[str, str], str]
    _layout: codec.RecordLayout

    async def lines(
        self, session_id: str, symbol: str, chunk: int = SCAN_COUNT
    ) -> AsyncIterator[ReadResult[str]]:
        """Stream a pair's records as migration lines in chunks (HSCAN), so memory stays flat.
        A record of another session or pair is bad data here."""
        key = self._hash(session_id, symbol)
        async for raw_chunk in _hscan_chunks(self._r, key, chunk):
            yield codec.lines(self._layout, key, session_id, symbol, raw_chunk)

    @redis_errors
    async def raw(self, session_id: str, symbol: str, record_keys: Sequence[str]) -> list[str]:
        """The stored text of records by the record keys their lines end with ('' if gone)."""
        key = self._hash(session_id, symbol)
        names = [record_key.removeprefix(f"{key}#") for record_key in record_keys]
        found = cast(list[str | None], await self._r.hmget(key, names)) if names else []
        return [value or "" for value in found]


class OrderStore(_MigrationReads):
    """Orders per (session, pair): ``orders:{S}:<pair>``, one JSON value per order id."""

    _hash = staticmethod(keys.orders)
    _layout = codec.ORDERS

    def __init__(self, redis: Redis) -> None:
        self._r = redis

    @redis_errors
    async def save(self, order: Order) -> None:
        """Insert or replace the order (the trading loop re-saves it as it fills)."""
        key = keys.orders(order.session_id, order.symbol)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(key, order.order_id, codec.order_to_json(order))
            pipe.sadd(keys.registry(order.session_id), key)
            await pipe.execute()

    @redis_errors
    async def save_many(self, orders: Sequence[Order]) -> None:
        """Save orders of any sessions, pipelined; each pair's hash is registered in the
        same round trip (a crash in between leaves a registered hash, never an unknown one:
        the registration is queued first)."""
        hashes = {(o.session_id, keys.orders(o.session_id, o.symbol)) for o in orders}
        async with self._r.pipeline(transaction=False) as pipe:
            for session_id, key in sorted(hashes):
                pipe.sadd(keys.registry(session_id), key)
            for order in orders:
                key = keys.orders(order.session_id, order.symbol)
                pipe.hset(key, order.order_id, codec.order_to_json(order))
            await pipe.execute()

    @redis_errors
    async def get(self, session_id: str, symbol: str, order_id: str) -> Order | None:
        key = keys.orders(session_id, symbol)
        raw = await self._r.hget(key, order_id)
        if raw is None:
            return None
        return codec.decode(f"{key}#{order_id}", raw, codec.order_from_json)

    @redis_errors
    async def count(self, session_id: str, symbol: str) -> int:
        return int(await self._r.hlen(keys.orders(session_id, symbol)))


# Record a fill once, and for a buy grow its position and (re)index it as uncovered.
# KEYS: fills hash, position hash, positions zset, uncovered zset, the session's key registry
# ARGV: fill key, fill json, side, position id, symbol, opened_at iso, opened_at ms, contribution
_RECORD_FILL = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[5], KEYS[1])
if ARGV[3] == 'buy' then
  redis.call('SADD', KEYS[5], KEYS[2], KEYS[3], KEYS[4])
  redis.call('HSETNX', KEYS[2], 'symbol', ARGV[5])
  redis.call('HSETNX', KEYS[2], 'opened_at', ARGV[6])
  redis.call('HSET', KEYS[2], 'f:' .. ARGV[1], ARGV[8])
  redis.call('HINCRBY', KEYS[2], 'v', 1)
  redis.call('ZADD', KEYS[3], 'NX', ARGV[7], ARGV[4])
  redis.call('ZADD', KEYS[4], 'NX', ARGV[7], ARGV[4])
end
return 1
"""


class FillStore(_MigrationReads):
    """Fills per (session, pair): ``fills:{S}:<pair>``, keyed by the fill's identity."""

    _hash = staticmethod(keys.fills)
    _layout = codec.FILLS

    def __init__(self, redis: Redis, events: str = keys.FILL_EVENTS) -> None:
        self._r = redis
        self._events = events  # the stream new buy fills are announced on
        self._record = redis.register_script(_RECORD_FILL)

    @redis_errors
    async def record(self, fill: Fill) -> bool:
        """Record a fill; True if new, False if this execution was already recorded.

        A buy fill grows the position of its order (position id = buy order id) in the same
        atomic step, so a replayed execution can never count twice. A new buy fill is then
        announced on ``events:fills`` so settlement covers it within a second (after the
        record, in a call of its own: the stream is not in the session's slot; an
        announcement lost to a crash in between leaves the fill to the scheduled run).
        """
        s, sym = fill.session_id, fill.symbol
        opened = fill.timestamp
        result = await self._record(
            keys=[
                keys.fills(s, sym),
                keys.position(s, fill.order_id),
                keys.positions(s, sym),
                keys.uncovered(s, sym),
                keys.registry(s),
            ],
            args=[
                fill.key,
                codec.fill_to_json(fill),
                fill.side.value,
                fill.order_id,
                sym,
                codec.iso(opened),
                codec.millis(opened),
                codec.fill_contribution(fill),
            ],
        )
        if result and fill.side is Side.BUY:
            try:
                await publish_fill(self._r, self._events, s, sym)
            except StoreUnavailable as e:  # recorded: the scheduled run covers it instead
                log.warning("events.publish_failed", session=s, pair=sym, error=str(e))
        return bool(result)

    async def scan(
        self, session_id: str, symbol: str, chunk: int = SCAN_COUNT
    ) -> AsyncIterator[ReadResult[Fill]]:
        """Stream a pair's fills in chunks (HSCAN), so memory stays flat. A fill of another
        session or pair stored here is bad data, as it is to migration: counted with the
        pair's fills it would be matched against another market's prices."""
        key = keys.fills(session_id, symbol)
        parse = _fill_parser(session_id, symbol)
        async for raw_chunk in _hscan_chunks(self._r, key, chunk):
            yield _decode_all(key, raw_chunk, parse)

    @redis_errors
    async def count(self, session_id: str, symbol: str) -> int:
        """Distinct executions recorded for the pair (replays are already collapsed)."""
        return int(await self._r.hlen(keys.fills(session_id, symbol)))


# Record placed take-profits of one session, each atomically with its position's coverage:
# its tp_order metadata (one HSET of every field), the position's tp:<order> field, the
# pending marker of its generation gone, the generation counter past it, and the position out
# of the uncovered index only if no fill arrived since it was read (version). One call records
# a whole batch. The take-profit's order record goes into the pair's orders hash in the same
# step, so a crash can never leave coverage without the order its fills will belong to.
# KEYS: the session's key registry, then per pair: uncovered zset, orders hash; then per
#       take-profit: tp_order key, position hash (every key is registered)
# ARGV: the number of pairs, the metadata field names (``codec.TAKE_PROFIT_FIELDS``, joined),
#       then per take-profit one: its values joined by '|' (pair number from 1, order id,
#       amount, expected version, fully covered 1/0, position id, generation, covered-at time,
#       the metadata values, and last its order JSON, '' for none: the rest of the argument)
_RECORD_COVERAGE = (
    scripts.SPLIT
    + scripts.REGISTER
    + """
register(KEYS[1], KEYS, 2)
local names = split(ARGV[2], 0)
local record_at = 9 + #names
local a = 3
for k = 2 + 2 * tonumber(ARGV[1]), #KEYS, 2 do
  local tp, pos = KEYS[k], KEYS[k + 1]
  local v = split(ARGV[a], record_at)
  local record = v[record_at]
  a = a + 1
  local slot = 2 * tonumber(v[1])
  local order, amount, version, fully, pid, gen, at = v[2], v[3], v[4], v[5], v[6],
    tonumber(v[7]), v[8]
  if record ~= '' then redis.call('HSET', KEYS[slot + 1], order, record) end
  local meta = {}
  for i, name in ipairs(names) do
    meta[2 * i - 1] = name
    meta[2 * i] = v[8 + i]
  end
  redis.call('HSET', tp, unpack(meta))
  local now = redis.call('HMGET', pos, 'g', 'v', 'c')
  local set = {'tp:' .. order, amount}
  if tonumber(now[1] or '0') <= gen then
    set[#set + 1] = 'g'
    set[#set + 1] = gen + 1
  end
  if not now[3] then
    set[#set + 1] = 'c'
    set[#set + 1] = at
  end
  redis.call('HSET', pos, unpack(set))
  redis.call('HDEL', pos, 'p:' .. gen)
  if fully == '1' and now[2] == version then redis.call('ZREM', KEYS[slot], pid) end
end
return 1
"""
)

# Read many hashes of one session at once: per key, its field/value pairs (empty if none).
# One call instead of a pipelined HGETALL per key: redis-py's per-command cost dominates.
# KEYS: the hashes
_READ_HASHES = """
local rows = {}
for i, key in ipairs(KEYS) do rows[i] = redis.call('HGETALL', key) end
return rows
"""

# Release the coverage of a take-profit that is no longer live (cancelled or rejected). What
# it sold before it was cancelled (``kept``) stays covered.
# KEYS: tp_order key, position hash, uncovered zset, the session's key registry
# ARGV: order id, position id, score, status, kept amount ('0' = none)
_RELEASE_COVERAGE = """
redis.call('SADD', KEYS[4], KEYS[2], KEYS[3])
if ARGV[5] == '0' then
  redis.call('HDEL', KEYS[2], 'tp:' .. ARGV[1])
else
  redis.call('HSET', KEYS[2], 'tp:' .. ARGV[1], ARGV[5])
end
redis.call('ZADD', KEYS[3], 'NX', ARGV[3], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'status', ARGV[4]) end
return 1
"""


# The fence before sending (see ``PositionStore.fence``).
# KEYS: the session's lock, the session's key registry, then per order: its position's attempt
#       key, the position hash
# ARGV: the lock token ('' = not checked), then per order: generation, attempt token and
#       marker, joined by '|' (the marker is the rest: it holds '|' itself)
# Returns -1 when the lock is not the caller's (nothing written), else 1/0 per order.
_FENCE = (
    scripts.REGISTER
    + """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local fenced, written = {}, {}
for i = 3, #KEYS, 2 do
  local arg = ARGV[(i - 1) / 2 + 1]
  local j = string.find(arg, '|', 1, true)
  local k = string.find(arg, '|', j + 1, true)
  local gen, token, marker = tonumber(string.sub(arg, 1, j - 1)), string.sub(arg, j + 1, k - 1),
    string.sub(arg, k + 1)
  local current = tonumber(redis.call('HGET', KEYS[i + 1], 'g') or '0')
  if redis.call('GET', KEYS[i]) == token and current == gen then
    redis.call('HSET', KEYS[i + 1], 'p:' .. gen, marker, 'g', gen + 1)
    written[#written + 1] = KEYS[i + 1]
    fenced[#fenced + 1] = 1
  else
    fenced[#fenced + 1] = 0
  end
end
register(KEYS[2], written, 1)
return fenced
"""
)


# An amend in place, only on a take-profit still recorded (a record deleted meanwhile, by
# retention, is not written back in part). KEYS: tp_order   ARGV: price, tier, markup
_AMEND_TP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'price', ARGV[1], 'tier', ARGV[2], 'markup', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'amends', 1)
return 1
"""


class PositionStore:
    """Positions (``position:{S}:<id>``) and the per-pair age-ordered uncovered index."""

    def __init__(self, redis: Redis) -> None:
        self._r = redis
        self._fence = redis.register_script(_FENCE)
        self._amend = redis.register_script(_AMEND_TP)
        self._cover = redis.register_script(_RECORD_COVERAGE)
        self._release = redis.register_script(_RELEASE_COVERAGE)
        self._hashes = redis.register_script(_READ_HASHES)

    @redis_errors
    async def get(self, session_id: str, position_id: str) -> Position | None:
        key = keys.position(session_id, position_id)
        fields = cast(dict[str, str], await self._r.hgetall(key))
        if not fields:
            return None
        return codec.decode(key, fields, _position_parser(session_id, position_id))

    @redis_errors
    async def uncovered_ids(self, session_id: str, symbol: str, limit: int = -1) -> list[str]:
        """Ids of the pair's uncovered positions, oldest first."""
        stop = -1 if limit < 0 else limit - 1
        return cast(list[str], await self._r.zrange(keys.uncovered(session_id, symbol), 0, stop))

    @redis_errors
    async def uncovered(
        self, session_id: str, symbol: str, limit: int = -1
    ) -> ReadResult[Position]:
        """The pair's uncovered positions, oldest first: one ZRANGE, then one pipelined
        round trip per PIPELINE_CHUNK positions."""
        ids = await self.uncovered_ids(session_id, symbol, limit)
        return await self._read_many(session_id, ids)

    @redis_errors
    async def all(self, session_id: str, symbol: str) -> ReadResult[Position]:
        """Every position of the pair, covered or not, oldest first: those of the positions
        index and of the uncovered index (a union, so neither can hide one)."""
        indexes = [keys.positions(session_id, symbol), keys.uncovered(session_id, symbol)]
        ids = cast(list[str], await self._r.zunion(indexes, aggregate="MIN"))
        return await self._read_many(session_id, ids)

    async def _read_many(self, session_id: str, ids: Sequence[str]) -> ReadResult[Position]:
        result: ReadResult[Position] = ReadResult()
        for start in range(0, len(ids), PIPELINE_CHUNK):
            chunk = ids[start : start + PIPELINE_CHUNK]
            names = [keys.position(session_id, position_id) for position_id in chunk]
            rows = cast(list[list[str]], await self._hashes(keys=names))
            positions_from_rows(session_id, chunk, names, rows, result)
        return result

    @redis_errors
    async def record_coverage(self, coverages: Sequence[Coverage]) -> None:
        """Record placed take-profits (see _RECORD_COVERAGE), one call per session (per
        COVERAGE_CHUNK take-profits)."""
        by_session: dict[str, list[Coverage]] = {}
        for c in coverages:
            by_session.setdefault(c.position.session_id, []).append(c)
        for session_id, group in by_session.items():
            for start in range(0, len(group), COVERAGE_CHUNK):
                await self._record_coverage(session_id, group[start : start + COVERAGE_CHUNK])

    async def _record_coverage(self, session_id: str, group: Sequence[Coverage]) -> None:
        pairs: dict[str, str] = {}  # pair → its number in the script's keys, from 1
        pair_keys: list[str] = []
        tp_keys: list[str] = []
        args: list[str] = []
        for c in group:
            p = c.position
            number = pairs.get(p.symbol)
            if number is None:
                number = pairs[p.symbol] = str(len(pairs) + 1)
                pair_keys += [
                    keys.uncovered(session_id, p.symbol),
                    keys.orders(session_id, p.symbol),
                ]
            tp_keys += [
                keys.tp_order(session_id, c.order_id),
                keys.position(session_id, p.position_id),
            ]
            values = codec.joined([
                number, c.order_id, str(c.amount), str(p.version), "1" if c.fully_covered else "0",
                p.position_id, str(c.generation), c.take_profit.created_at.isoformat(),
                *codec.take_profit_values(c.take_profit),
            ])  # fmt: skip
            record = codec.order_to_json(c.order) if c.order is not None else ""
            args.append(f"{values}{codec.SEPARATOR}{record}")
        await self._cover(
            keys=[keys.registry(session_id), *pair_keys, *tp_keys],
            args=[str(len(pairs)), _TAKE_PROFIT_NAMES, *args],
        )

    @redis_errors
    async def fence(
        self, session_id: str, lease: SessionLease | None, marks: Sequence[Fence]
    ) -> set[str]:
        """Write the pending markers of orders about to be sent, in one atomic step, and only
        where this worker still holds what entitles it to send: the session's lock (``lease``,
        checked once for all) and each position's attempt token, with the position's generation
        unchanged since it was read. Each fenced marker moves the generation on, so its client
        id is never fenced (or sent) again. Returns the ids of the positions fenced; raises
        LockLost, writing nothing, when the session's lock is no longer this worker's."""
        if not marks:
            return set()
        lock = keys.settlement_lock(session_id, lease.scope if lease is not None else "")
        script_keys = [lock, keys.registry(session_id)]
        args = [lease.token if lease is not None else ""]
        for m in marks:
            script_keys += [
                keys.tp_attempt(session_id, m.position.position_id),
                keys.position(session_id, m.position.position_id),
            ]
            head = codec.joined([str(m.pending.generation), m.attempt_token])
            args.append(f"{head}{codec.SEPARATOR}{codec.pending_value(m.pending)}")
        fenced = await self._fence(keys=script_keys, args=args)
        if fenced == -1:
            if lease is not None:
                lease.lost = True
            raise LockLost(session_id)
        return {m.position.position_id for m, ok in zip(marks, fenced, strict=True) if ok}

    @redis_errors
    async def clear_pending(self, marks: Sequence[tuple[Position, int]]) -> None:
        """Forget pending markers whose order is known not to exist on the exchange."""
        if not marks:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for position, generation in marks:
                pipe.hdel(
                    keys.position(position.session_id, position.position_id), f"p:{generation}"
                )
            await pipe.execute()

    @redis_errors
    async def release_coverage(
        self, position: Position, order_id: str, status: TpStatus, kept: Decimal = ZERO
    ) -> None:
        """Forget a take-profit that is no longer live; what it sold (``kept``) stays covered."""
        s = position.session_id
        await self._release(
            keys=[
                keys.tp_order(s, order_id),
                keys.position(s, position.position_id),
                keys.uncovered(s, position.symbol),
                keys.registry(s),
            ],
            args=[
                order_id,
                position.position_id,
                codec.millis(position.opened_at),
                status.value,
                "0" if kept == 0 else str(kept),
            ],
        )

    @redis_errors
    async def record_exit(self, position: Position, order_id: str, amount: Decimal) -> None:
        """Record quantity sold by a stop-loss exit (``x:<order id>``): no longer to be covered."""
        s = position.session_id
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(keys.position(s, position.position_id), f"x:{order_id}", str(amount))
            pipe.zrem(keys.uncovered(s, position.symbol), position.position_id)
            pipe.sadd(keys.registry(s), keys.position(s, position.position_id))
            await pipe.execute()

    @redis_errors
    async def set_tp_status(self, session_id: str, order_id: str, status: TpStatus) -> None:
        """Note a take-profit's state as last seen on the exchange (e.g. ``filled``)."""
        key = keys.tp_order(session_id, order_id)
        if await self._r.exists(key):
            await self._r.hset(key, "status", status.value)

    @redis_errors
    async def amend_tp(
        self, session_id: str, order_id: str, price: Decimal, tier: int, markup: Decimal
    ) -> None:
        """Note a take-profit amended in place: its new price, the tier it is priced at, and one
        more amend (``amends``: how analytics counts it repriced)."""
        key = keys.tp_order(session_id, order_id)
        await self._amend(keys=[key], args=[str(price), str(tier), str(markup)])

    @redis_errors
    async def read_many(self, session_id: str, ids: Sequence[str]) -> ReadResult[Position]:
        """Positions by id, pipelined; unknown ids are left out."""
        return await self._read_many(session_id, ids)

    @redis_errors
    async def tp_order(self, session_id: str, order_id: str) -> TakeProfitRecord | None:
        """A take-profit's metadata, or None if none is recorded. Raises BadRecordError if it
        does not parse."""
        key = keys.tp_order(session_id, order_id)
        fields = cast(dict[str, str], await self._r.hgetall(key))
        if not fields:
            return None
        return codec.decode(key, fields, codec.take_profit_from_fields)

    @redis_errors
    async def tp_orders(
        self, session_id: str, order_ids: Sequence[str]
    ) -> ReadResult[tuple[str, TakeProfitRecord]]:
        """The metadata of many take-profits as (order id, record), one round trip per
        PIPELINE_CHUNK; ids without a record are left out, records that do not parse are in
        ``bad``."""
        result: ReadResult[tuple[str, TakeProfitRecord]] = ReadResult()
        for start in range(0, len(order_ids), PIPELINE_CHUNK):
            chunk = order_ids[start : start + PIPELINE_CHUNK]
            names = [keys.tp_order(session_id, order_id) for order_id in chunk]
            rows = cast(list[list[str]], await self._hashes(keys=names))
            for order_id, key, row in zip(chunk, names, rows, strict=True):
                if not row:
                    continue
                try:
                    record = codec.decode(key, _fields(row), codec.take_profit_from_fields)
                except BadRecordError as e:
                    result.bad.append(e)
                    continue
                result.items.append((order_id, record))
        return result


class _Parsed:
    """Positions with something to cover, by key, with the row each was parsed from.

    A settlement run reads such a position twice: to price it, then under its claim (the
    read that guards exactly-once). The second read still comes from Redis; only when its
    row is the same as the first, field for field, is the position parsed then reused: the
    same row always parses to the same (immutable) position, so no result changes. Covered
    positions are not kept (they are not claimed), and the whole is emptied when full.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._by_key: dict[str, tuple[tuple[str, ...], Position]] = {}

    def parse(self, session_id: str, position_id: str, key: str, row: Sequence[str]) -> Position:
        """The position of ``row``; raises what ``codec.position_from_fields`` raises."""
        seen = tuple(row)
        kept = self._by_key.get(key)
        if kept is not None and kept[0] == seen:
            position = kept[1]
            if position.session_id == session_id and position.position_id == position_id:
                return position
        position = codec.position_from_fields(session_id, position_id, _fields(row))
        if position.uncovered > 0 or position.pending:
            if len(self._by_key) >= self._limit:
                self._by_key.clear()
            self._by_key[key] = (seen, position)
        else:
            self._by_key.pop(key, None)
        return position


_PARSED = _Parsed(limit=20_000)


def positions_from_rows(
    session_id: str,
    ids: Sequence[str],
    names: Sequence[str],
    rows: Sequence[Sequence[str]],
    result: ReadResult[Position],
) -> None:
    """Add the positions ``ids`` (keys ``names``) read as field/value rows to ``result``: an
    empty row (a position gone: expired, or an id that never had a fill) is left out, one that
    does not parse is in ``bad``."""
    for position_id, key, row in zip(ids, names, rows, strict=True):
        if not row:
            continue
        try:
            result.items.append(_PARSED.parse(session_id, position_id, key, row))
        except BadRecordError as e:
            result.bad.append(e)
        except codec.PARSE_ERRORS as e:  # as codec.decode: quarantined with key and reason
            result.bad.append(BadRecordError(key, _fields(row), f"{type(e).__name__}: {e}"))


def _fields(row: Sequence[str]) -> dict[str, str]:
    """A hash's field/value pairs as a script returns them (flat), as a dict."""
    values = iter(row)
    return dict(zip(values, values, strict=True))


def _decode_all(key: str, raw: dict[str, Any], parse: Any) -> ReadResult[Any]:
    result: ReadResult[Any] = ReadResult()
    for name, value in raw.items():
        try:
            result.items.append(codec.decode(f"{key}#{name}", value, parse))
        except BadRecordError as e:
            result.bad.append(e)
    return result


async def _hscan_chunks(redis: Redis, key: str, count: int) -> AsyncIterator[dict[str, Any]]:
    cursor = 0
    while True:
        cursor, chunk = await _hscan(redis, key, cursor, count)
        if chunk:
            yield chunk
        if cursor == 0:
            return


@redis_errors
async def _hscan(redis: Redis, key: str, cursor: int, count: int) -> tuple[int, dict[str, Any]]:
    next_cursor, chunk = await redis.hscan(key, cursor, count=count)
    return int(next_cursor), cast(dict[str, Any], chunk)


def _fill_parser(session_id: str, symbol: str) -> Callable[[Any], Fill]:
    def parse(raw: Any) -> Fill:
        fill = codec.fill_from_json(raw)
        if (fill.session_id, fill.symbol) != (session_id, symbol):
            raise ValueError(f"fill of {fill.session_id}/{fill.symbol} under {symbol}")
        return fill

    return parse


def _position_parser(session_id: str, position_id: str) -> Callable[[Any], Position]:
    def parse(fields: Any) -> Position:
        return codec.position_from_fields(session_id, position_id, fields)

    return parse
