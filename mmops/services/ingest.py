"""The ingest entry: a user's own market maker (any language) feeds sessions, orders and fills
to mmops through one Redis Stream read by a consumer group (docs/INGEST.md).

Each message is a flat map of text fields. It is parsed into the domain's own records
(``Session``, ``Order``, ``Fill``), so it is validated by the same rules as everything else, and
applied through the same writers the paper trading loop uses: the session registry, the order
store and the fill store (whose ``HSETNX`` by fill identity makes a redelivered fill harmless).
A message that cannot be applied is quarantined in ``ingest_rejects`` with its reason. A message
is acknowledged only once it is applied or quarantined, so a consumer that dies in between
leaves it pending, and another consumer claims it; a store that does not answer leaves the rest
of the batch pending too, to be retried after a backoff.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Protocol, TypeVar

from mmops import logs
from mmops.domain.bounds import check_bounds
from mmops.domain.models import (
    ZERO,
    Fill,
    Order,
    OrderStatus,
    Session,
    SessionStatus,
    Side,
    check_session_id,
)
from mmops.errors import BadDataError, StoreUnavailable
from mmops.ports import (
    Clock,
    FillWriter,
    LiveSessions,
    OrderBook,
    SessionLifecycle,
)
from mmops.services.stopping import sleep_or_stop

log = logs.get_logger("mmops.ingest")

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")

INGEST_MODE = "external"  # the ``mode`` of a session started through the ingest stream
MAX_PAIRS = 1000  # pairs one session_start may name
BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)  # waits after successive store outages


class IngestType(StrEnum):
    SESSION_START = "session_start"
    SESSION_END = "session_end"
    ORDER = "order"
    FILL = "fill"


class Outcome(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # already recorded: a redelivery or a replayed execution
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class IngestMessage:
    """One stream entry: its id (``1700000000000-0``) and its fields as written."""

    message_id: str
    fields: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class SessionEnd:
    session_id: str
    ended_at: datetime


@dataclass(frozen=True, slots=True)
class IngestCounts:
    """What one pass did: messages applied, found already recorded, quarantined, and the
    messages read per ``type`` (``unknown`` for a type that is not one of the four)."""

    applied: int = 0
    duplicates: int = 0
    quarantined: int = 0
    by_type: Mapping[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.applied + self.duplicates + self.quarantined

    def __add__(self, other: IngestCounts) -> IngestCounts:
        types = Counter(self.by_type)
        types.update(other.by_type)
        return IngestCounts(
            applied=self.applied + other.applied,
            duplicates=self.duplicates + other.duplicates,
            quarantined=self.quarantined + other.quarantined,
            by_type=dict(types),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "applied": self.applied,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "by_type": dict(self.by_type),
        }


class IngestStream(Protocol):
    """The ingest stream as one consumer of its group sees it (``RedisIngestStream``)."""

    name: str  # the stream's key: quarantined messages are recorded under it

    async def read(
        self, consumer: str, block_ms: int, count: int
    ) -> list[tuple[str, dict[str, str]]]:
        """Up to ``count`` messages for ``consumer``: its own pending ones first (read before
        and not acknowledged), else messages another consumer left unacknowledged too long,
        else new ones, waiting up to ``block_ms`` for them. Raises StoreUnavailable."""
        ...

    async def ack(self, message_ids: Sequence[str]) -> None: ...


class IngestRejects(Protocol):
    """``ingest_rejects`` (PostgreSQL, through the ``Warehouse``)."""

    async def record_ingest_reject(
        self,
        stream: str,
        message_id: str,
        session_id: str | None,
        raw: Mapping[str, str],
        reason: str,
        received_at: datetime,
    ) -> bool: ...


class IngestSessions(SessionLifecycle, Protocol):
    """Start and end sessions (Redis and PostgreSQL), and look one up in PostgreSQL."""

    async def get(self, session_id: str) -> Session | None: ...


class Rejected(ValueError):
    """A message that cannot be applied; the text is the reason recorded with it."""


# ---------------------------------------------------------------------------------------------
# Parsing: text fields → domain records. Pure; raises Rejected with the reason.

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_STATUS_ALIASES = {"closed": "filled", "cancelled": "canceled", "expired": "canceled"}


def _text(fields: Mapping[str, str], name: str) -> str | None:
    """The field's text, or None when it is absent or empty (an empty field is no field)."""
    value = fields.get(name)
    return value if value else None


def _required(fields: Mapping[str, str], name: str) -> str:
    value = _text(fields, name)
    if value is None:
        raise Rejected(f"missing field {name!r}")
    return value


def _decimal(fields: Mapping[str, str], name: str, default: Decimal | None = None) -> Decimal:
    """A plain decimal string (``0.5``, ``1e-3``): finite and within the bound of every amount
    (``mmops.domain.bounds``). Sign rules are the domain model's."""
    raw = _text(fields, name)
    if raw is None:
        if default is None:
            raise Rejected(f"missing field {name!r}")
        return default
    if len(raw) > 100 or not _DECIMAL.fullmatch(raw):
        raise Rejected(f"{name}: not a decimal number: {raw[:100]!r}")
    try:
        return check_bounds(Decimal(raw))
    except (InvalidOperation, ValueError) as e:
        raise Rejected(f"{name}: {e}") from None


def _time(fields: Mapping[str, str], name: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 time with its offset (``2026-11-26T08:00:00+00:00``, ``...Z``), in UTC."""
    raw = _text(fields, name)
    if raw is None:
        if now is None:
            raise Rejected(f"missing field {name!r}")
        return now
    try:
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is None:
            raise Rejected(f"{name}: time without an offset: {raw[:64]!r}")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as e:
        if isinstance(e, Rejected):
            raise
        raise Rejected(f"{name}: not an ISO 8601 time: {raw[:64]!r}") from None


def _choice(fields: Mapping[str, str], name: str, kind: type[E]) -> E:
    raw = _required(fields, name)
    value = _STATUS_ALIASES.get(raw, raw) if kind is OrderStatus else raw
    try:
        return kind(value)
    except ValueError:
        allowed = "|".join(m.value for m in kind)
        raise Rejected(f"{name}: {raw[:32]!r} is not one of {allowed}") from None


def _build(make: Callable[[], T]) -> T:
    """Run a domain constructor; its validation failure becomes the reason."""
    try:
        return make()
    except (ValueError, BadDataError) as e:
        raise Rejected(str(e)) from None


def parse_type(fields: Mapping[str, str]) -> IngestType:
    raw = _required(fields, "type")
    try:
        return IngestType(raw)
    except ValueError:
        allowed = "|".join(t.value for t in IngestType)
        raise Rejected(f"unknown type {raw[:32]!r}: expected {allowed}") from None


def parse_session_start(fields: Mapping[str, str], now: datetime, exchange: str) -> Session:
    """A ``session_start`` message as the session it starts (mode ``external``)."""
    sid = _required(fields, "session")
    pairs = tuple(p.strip() for p in _required(fields, "pairs").split(","))
    if len(pairs) > MAX_PAIRS:
        raise Rejected(f"pairs: {len(pairs)} pairs, at most {MAX_PAIRS}")
    capital = _decimal(fields, "capital", ZERO)
    started_at = _time(fields, "started_at", now)
    venue = _text(fields, "exchange") or exchange
    if len(venue) > 64:
        raise Rejected("exchange: longer than 64 characters")
    return _build(
        lambda: Session(sid, pairs, started_at, mode=INGEST_MODE, exchange=venue, capital=capital)
    )


def parse_session_end(fields: Mapping[str, str], now: datetime) -> SessionEnd:
    sid = _build(lambda: check_session_id(_required(fields, "session")))
    return SessionEnd(sid, _time(fields, "ended_at", now))


def parse_order(fields: Mapping[str, str]) -> Order:
    sid, pair, oid = (_required(fields, n) for n in ("session", "pair", "order_id"))
    side = _choice(fields, "side", Side)
    price, amount = _decimal(fields, "price"), _decimal(fields, "amount")
    filled = _decimal(fields, "filled", ZERO)
    status = _choice(fields, "status", OrderStatus)
    created_at = _time(fields, "created_at")
    client_id = _text(fields, "client_order_id")
    return _build(
        lambda: Order(
            sid, oid, pair, side, price, amount, created_at, status, filled,
            client_order_id=client_id,
        )
    )  # fmt: skip


def _behind(order: Order, known: Order) -> bool:
    """Whether ``order`` is an older state of ``known``: less filled, or open again after a
    final status. A redelivered message never moves an order backwards."""
    final = known.status is not OrderStatus.OPEN
    return order.filled < known.filled or (final and order.status is OrderStatus.OPEN)


def parse_fill(fields: Mapping[str, str]) -> Fill:
    sid, pair, oid = (_required(fields, n) for n in ("session", "pair", "order_id"))
    side = _choice(fields, "side", Side)
    price, quantity = _decimal(fields, "price"), _decimal(fields, "quantity")
    fee = _decimal(fields, "fee", ZERO)
    at = _time(fields, "time")
    # Required: the venue's id is what makes the fill feed's copy of this execution, or a
    # replay, harmless. Without it the two would be two fills and the position counted twice.
    trade_id = _required(fields, "trade_id")
    return _build(lambda: Fill(sid, oid, pair, side, price, quantity, fee, at, trade_id))


# ---------------------------------------------------------------------------------------------


class IngestService:
    """Read the ingest stream as one consumer of its group and apply each message once.

    ``sessions`` starts and ends sessions (the ``SessionRegistry``); ``live`` is the sessions'
    live state in Redis, which orders and fills are checked against; ``exchange`` names the
    venue of a session whose ``session_start`` names none.
    """

    def __init__(
        self,
        stream: IngestStream,
        sessions: IngestSessions,
        live: LiveSessions,
        orders: OrderBook,
        fills: FillWriter,
        rejects: IngestRejects,
        clock: Clock,
        exchange: str = "paper",
    ) -> None:
        self._stream = stream
        self._sessions = sessions
        self._live = live
        self._orders = orders
        self._fills = fills
        self._rejects = rejects
        self._clock = clock
        self._exchange = exchange
        self._pairs: dict[str, frozenset[str]] = {}  # session id → pairs (they never change)
        self.totals = IngestCounts()  # every pass of this service added up

    async def run_once(self, consumer: str, block_ms: int = 1000, count: int = 100) -> IngestCounts:
        """Read one batch and apply or quarantine each message, in stream order, then
        acknowledge them. Raises StoreUnavailable when Redis or PostgreSQL does not answer: the
        messages handled before it are acknowledged, the rest stay pending for a retry."""
        entries = await self._stream.read(consumer, block_ms, count)
        messages = [IngestMessage(message_id, fields) for message_id, fields in entries]
        outcomes: Counter[Outcome] = Counter()
        types: Counter[str] = Counter()
        done: list[str] = []
        try:
            for message in messages:
                types[_type_name(message.fields)] += 1
                outcomes[await self._handle(message)] += 1
                done.append(message.message_id)
        finally:
            if done:
                await self._stream.ack(done)
        counts = IngestCounts(
            applied=outcomes[Outcome.APPLIED],
            duplicates=outcomes[Outcome.DUPLICATE],
            quarantined=outcomes[Outcome.QUARANTINED],
            by_type=dict(types),
        )
        self.totals += counts
        return counts

    async def run(self, consumer: str, stop: asyncio.Event) -> None:
        """Run passes until ``stop`` is set, backing off (1 s up to 30 s) while a store is down."""
        failures = 0
        while not stop.is_set():
            try:
                counts = await self.run_once(consumer)
            except StoreUnavailable as e:
                wait = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("ingest.store_unavailable", error=str(e), retry_in=wait)
                await sleep_or_stop(stop, wait)
                continue
            failures = 0
            if counts.total:
                log.info(
                    "ingest.batch", consumer=consumer, applied=counts.applied,
                    duplicates=counts.duplicates, quarantined=counts.quarantined,
                )  # fmt: skip

    async def _handle(self, message: IngestMessage) -> Outcome:
        try:
            return await self._apply(message.fields)
        except Rejected as e:
            await self._quarantine(message, str(e))
            return Outcome.QUARANTINED
        except BadDataError as e:  # a stored record it needs is unreadable: this message only
            await self._quarantine(message, f"{type(e).__name__}: {e}")
            return Outcome.QUARANTINED

    async def _apply(self, fields: Mapping[str, str]) -> Outcome:
        kind = parse_type(fields)
        now = self._clock.now()
        if kind is IngestType.SESSION_START:
            return await self._start(parse_session_start(fields, now, self._exchange))
        if kind is IngestType.SESSION_END:
            return await self._end(parse_session_end(fields, now))
        if kind is IngestType.ORDER:
            order = parse_order(fields)
            await self._check_pair(order.session_id, order.symbol)
            known = await self._orders.get(order.session_id, order.symbol, order.order_id)
            if known is not None and _behind(order, known):
                return Outcome.DUPLICATE  # a stale message delivered late: not a step back
            await self._orders.save(order)
            return Outcome.APPLIED
        fill = parse_fill(fields)
        await self._check_pair(fill.session_id, fill.symbol)
        return Outcome.APPLIED if await self._fills.record(fill) else Outcome.DUPLICATE

    async def _start(self, session: Session) -> Outcome:
        """Start a session once: a session already live with the same pairs is left as it is
        (a redelivered start must not resume an ended or halted session)."""
        live = await self._live.get(session.id)
        known = live or await self._sessions.get(session.id)
        if known is not None and set(known.pairs) != set(session.pairs):
            raise Rejected(
                f"session {session.id} was started with pairs {','.join(known.pairs)},"
                f" not {','.join(session.pairs)}"
            )
        if known is not None and (live is not None or known.status is SessionStatus.ENDED):
            self._pairs[session.id] = frozenset(known.pairs)
            return Outcome.DUPLICATE
        await self._sessions.start(session)
        self._pairs[session.id] = frozenset(session.pairs)
        log.info("ingest.session_started", session=session.id, pairs=len(session.pairs))
        return Outcome.APPLIED

    async def _end(self, end: SessionEnd) -> Outcome:
        live = await self._live.get(end.session_id)
        if live is None:
            raise Rejected(f"unknown session {end.session_id} (send session_start first)")
        if live.status is SessionStatus.ENDED:
            return Outcome.DUPLICATE
        await self._sessions.end(end.session_id, end.ended_at)
        log.info("ingest.session_ended", session=end.session_id)
        return Outcome.APPLIED

    async def _check_pair(self, session_id: str, symbol: str) -> None:
        pairs = self._pairs.get(session_id)
        if pairs is None:
            live = await self._live.get(session_id)
            if live is None:
                raise Rejected(f"unknown session {session_id} (send session_start first)")
            if len(self._pairs) >= 10_000:
                self._pairs.clear()
            pairs = self._pairs[session_id] = frozenset(live.pairs)
        if symbol not in pairs:
            raise Rejected(f"pair {symbol} is not a pair of session {session_id}")

    async def _quarantine(self, message: IngestMessage, reason: str) -> None:
        fields = message.fields
        sid = fields.get("session")
        try:
            sid = check_session_id(sid) if sid else None
        except BadDataError:
            sid = None
        new = await self._rejects.record_ingest_reject(
            self._stream.name, message.message_id, sid, fields, reason, self._clock.now()
        )
        log.warning(
            "ingest.quarantined", message_id=message.message_id, session=sid,
            type=_type_name(fields), reason=reason, first_time=new,
        )  # fmt: skip


_TYPE_NAMES = frozenset(t.value for t in IngestType)


def _type_name(fields: Mapping[str, str]) -> str:
    raw = fields.get("type", "")
    return raw if raw in _TYPE_NAMES else "unknown"
