"""The nouns of mmops: small frozen dataclasses, ``Decimal`` money, timezone-aware UTC times.

Constructors validate what every later step relies on (finite, non-negative amounts; aware
timestamps; well-formed identifiers), so a malformed record fails where it is read, with a
reason, rather than deep inside pricing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from mmops.errors import InvalidIdentifier

ZERO = Decimal(0)

# The identifier rules as pattern text, so a reader that matches whole records at once (the
# migration's fast path in the Redis codec) applies exactly these rules.
SESSION_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
_ASSET = r"[A-Z0-9]{1,16}"
SYMBOL_PATTERN = rf"{_ASSET}/{_ASSET}"
ORDER_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_SYMBOL = re.compile(SYMBOL_PATTERN)
_ORDER_ID = re.compile(ORDER_ID_PATTERN)


# Identifiers already found well-formed, one set per rule: the same few session, position and
# pair ids are checked again each time a key is named or a record is built from another, and
# looking one up costs a fraction of matching it. Only exact ``str`` values go in (a subclass
# could compare equal to a kept id and be something else), each after its full check; a set
# is emptied when it reaches _KNOWN_KEPT ids, so memory stays bounded.
_KNOWN_KEPT = 16_384  # per rule: at most a few MB of short strings
_KNOWN_SESSION_IDS: set[str] = set()
_KNOWN_SYMBOLS: set[str] = set()
_KNOWN_ORDER_IDS: set[str] = set()


def _keep(value: str, known: set[str]) -> None:
    if type(value) is str:
        if len(known) >= _KNOWN_KEPT:
            known.clear()
        known.add(value)


def check_session_id(value: str) -> str:
    """Return ``value`` if it is a safe session id, else raise :class:`InvalidIdentifier`.

    A session id is embedded in Redis keys as a ``{S}`` hash tag, so braces, colons and
    whitespace are refused: they could move a key into another session's slot or name.
    """
    if type(value) is str and value in _KNOWN_SESSION_IDS:  # passed before, so passes again
        return value
    if not isinstance(value, str) or not _SESSION_ID.fullmatch(value):
        raise InvalidIdentifier(f"invalid session id {value!r}: expected 1-64 of [A-Za-z0-9_.-]")
    _keep(value, _KNOWN_SESSION_IDS)
    return value


def check_symbol(value: str) -> str:
    """Return ``value`` if it is a ccxt unified symbol such as ``BTC/USD``."""
    if type(value) is str and value in _KNOWN_SYMBOLS:  # passed before, so passes again
        return value
    if not isinstance(value, str) or not _SYMBOL.fullmatch(value):
        raise InvalidIdentifier(f"invalid pair {value!r}: expected BASE/QUOTE in capitals")
    _keep(value, _KNOWN_SYMBOLS)
    return value


def check_order_id(value: str) -> str:
    """Return ``value`` if it is a safe order/position/fill id (no braces or whitespace)."""
    if type(value) is str and value in _KNOWN_ORDER_IDS:  # passed before, so passes again
        return value
    if not isinstance(value, str) or not _ORDER_ID.fullmatch(value):
        raise InvalidIdentifier(f"invalid id {value!r}: expected 1-128 of [A-Za-z0-9_.:-]")
    _keep(value, _KNOWN_ORDER_IDS)
    return value


def check_amount(name: str, value: Decimal, *, positive: bool = False) -> Decimal:
    """Return ``value`` if it is a finite, non-negative ``Decimal`` (strictly positive if asked)."""
    if (
        isinstance(value, Decimal)
        and value.is_finite()
        and (value > 0 or (not positive and value == 0))
    ):
        return value  # the common case, decided in one test; what is refused is worded below
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal, got {value!r}")
    raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'}, got {value}")


def check_time(name: str, value: datetime) -> datetime:
    """Return ``value`` if it is a timezone-aware datetime."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class SessionStatus(StrEnum):
    ACTIVE = "active"
    HALTED = "halted"  # the stop-loss told the trading loop to stop buying
    ENDED = "ended"


class OrderStatus(StrEnum):
    OPEN = "open"
    FILLED = "filled"
    CANCELED = "canceled"
    REJECTED = "rejected"


class PairStatus(StrEnum):
    """What a pair admits now, in Kraken's words (AssetPairs ``status``,
    https://docs.kraken.com/api-reference/market-data/get-tradable-asset-pairs)."""

    ONLINE = "online"
    POST_ONLY = "post_only"  # only post-only limit orders: exactly what a take-profit is
    LIMIT_ONLY = "limit_only"  # only limit orders
    CANCEL_ONLY = "cancel_only"  # no new orders
    REDUCE_ONLY = "reduce_only"  # only orders that reduce a margin position

    @property
    def admits_maker_sells(self) -> bool:
        """Whether a new post-only limit sell (a take-profit) may be placed."""
        return self.admits_limit(post_only=True)

    def admits_limit(self, post_only: bool) -> bool:
        """Whether a new limit order (spot, not reduce-only) may be placed."""
        if self is PairStatus.POST_ONLY:
            return post_only
        return self in (PairStatus.ONLINE, PairStatus.LIMIT_ONLY)


class OrderKind(StrEnum):
    ENTRY = "entry"  # a quote of the trading loop
    TAKE_PROFIT = "take_profit"
    EXIT = "exit"  # a stop-loss flatten


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    pairs: tuple[str, ...]
    started_at: datetime
    status: SessionStatus = SessionStatus.ACTIVE
    mode: str = "paper"
    exchange: str = "paper"
    capital: Decimal = ZERO
    ended_at: datetime | None = None

    def __post_init__(self) -> None:
        check_session_id(self.id)
        for pair in self.pairs:
            check_symbol(pair)
        if len(set(self.pairs)) != len(self.pairs):
            raise ValueError(f"session {self.id}: duplicate pairs in {self.pairs}")
        check_time("started_at", self.started_at)
        if self.ended_at is not None:
            check_time("ended_at", self.ended_at)
        check_amount("capital", self.capital)

    @property
    def pair_count(self) -> int:
        return len(self.pairs)


@dataclass(frozen=True, slots=True)
class Order:
    session_id: str
    order_id: str
    symbol: str
    side: Side
    price: Decimal
    amount: Decimal
    created_at: datetime
    status: OrderStatus = OrderStatus.OPEN
    filled: Decimal = ZERO
    kind: OrderKind = OrderKind.ENTRY
    client_order_id: str | None = None

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        check_order_id(self.order_id)
        check_symbol(self.symbol)
        check_amount("price", self.price, positive=True)
        check_amount("amount", self.amount, positive=True)
        check_amount("filled", self.filled)
        check_time("created_at", self.created_at)


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution. ``fee`` is in the quote currency. ``trade_id`` is the venue's, when known."""

    session_id: str
    order_id: str
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal
    fee: Decimal
    timestamp: datetime
    trade_id: str | None = None

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        check_order_id(self.order_id)
        check_symbol(self.symbol)
        check_amount("price", self.price, positive=True)
        check_amount("quantity", self.quantity, positive=True)
        check_amount("fee", self.fee)
        check_time("timestamp", self.timestamp)
        if self.trade_id is not None:
            check_order_id(self.trade_id)

    @property
    def key(self) -> str:
        """The identity used to recognise a replayed execution.

        The venue's trade id when known; otherwise the natural key of the ``fills`` table's
        unique constraint (order, time, price, quantity; see docs/ARCHITECTURE.md), normalised
        so ``1.0`` and ``1.00`` match.
        """
        if self.trade_id is not None:
            return f"t:{self.trade_id}"
        millis = int(self.timestamp.timestamp() * 1000)
        return f"n:{self.order_id}:{millis}:{self.price.normalize()}:{self.quantity.normalize()}"


@dataclass(frozen=True, slots=True)
class PendingTakeProfit:
    """A take-profit about to be placed (or whose placement had no clear answer).

    It is written before the order is sent (the fence), so a crash or a pause between placing
    and recording leaves a trace. The order carries ``deadline`` to the exchange, which refuses
    it if it arrives later; so until ``deadline`` (plus the hosts' clock skew) the order may be
    in flight and nobody may look it up or place again. ``None``: a marker written before
    deadlines existed, treated as long past.
    """

    generation: int
    client_order_id: str
    amount: Decimal
    deadline: datetime | None = None

    def in_flight(self, now: datetime, skew: timedelta) -> bool:
        """Whether the order may still reach the exchange (so its absence proves nothing)."""
        return self.deadline is not None and now < self.deadline + skew


@dataclass(frozen=True, slots=True)
class Position:
    """The filled quantity of one buy order, and what covers or closed it.

    ``cost`` is Σ price·qty of the buy fills and ``fees`` their fees (quote currency).
    ``covered`` is the quantity held by live take-profits; ``closed`` what was sold otherwise.
    """

    session_id: str
    position_id: str
    symbol: str
    opened_at: datetime
    filled: Decimal
    cost: Decimal
    fees: Decimal
    covered: Decimal = ZERO
    closed: Decimal = ZERO
    version: int = 0  # the number of fills recorded; lets coverage detect a concurrent fill
    generation: int = 0  # client ids fenced so far: the next order's client-id generation
    take_profits: tuple[tuple[str, Decimal], ...] = ()  # (order id, amount) of live TPs
    pending: tuple[PendingTakeProfit, ...] = ()
    first_covered_at: datetime | None = None

    def __post_init__(self) -> None:
        check_session_id(self.session_id)
        check_order_id(self.position_id)
        check_symbol(self.symbol)
        check_time("opened_at", self.opened_at)
        check_amount("filled", self.filled)
        check_amount("cost", self.cost)
        check_amount("fees", self.fees)
        check_amount("covered", self.covered)
        check_amount("closed", self.closed)

    @property
    def pending_amount(self) -> Decimal:
        pending = self.pending
        return sum((p.amount for p in pending), ZERO) if pending else ZERO

    @property
    def uncovered(self) -> Decimal:
        """Filled - covered - closed - pending, never below zero.

        Pending take-profits count as covering: until their fate is known, the quantity they
        name may already be on the exchange, and covering it again could sell it twice.
        """
        rest = self.filled - self.covered - self.closed - self.pending_amount
        return rest if rest > ZERO else ZERO  # max(ZERO, rest): ZERO itself when not above

    @property
    def average_price(self) -> Decimal:
        return self.cost / self.filled if self.filled else ZERO


@dataclass(frozen=True, slots=True)
class Market:
    """Trading rules of one pair. Fees are fractions (0.0025 = 0.25%). ``status``: what the
    pair admits now (a ``cancel_only`` pair is listed, but takes no new order)."""

    symbol: str
    base: str
    quote: str
    tick: Decimal
    lot: Decimal
    min_amount: Decimal
    min_cost: Decimal
    maker_fee: Decimal
    taker_fee: Decimal
    status: PairStatus = PairStatus.ONLINE

    def __post_init__(self) -> None:
        check_symbol(self.symbol)
        check_amount("tick", self.tick, positive=True)
        check_amount("lot", self.lot, positive=True)
        for name in ("min_amount", "min_cost", "maker_fee", "taker_fee"):
            check_amount(name, getattr(self, name))
        if self.maker_fee >= 1 or self.taker_fee >= 1:
            raise ValueError(f"{self.symbol}: fees must be fractions below 1")


@dataclass(frozen=True, slots=True)
class Ticker:
    symbol: str
    bid: Decimal
    ask: Decimal
    timestamp: datetime
    last: Decimal | None = None

    def __post_init__(self) -> None:
        check_symbol(self.symbol)
        check_amount("bid", self.bid, positive=True)
        check_amount("ask", self.ask, positive=True)
        check_time("timestamp", self.timestamp)


@dataclass(frozen=True, slots=True)
class Balance:
    """One asset's balance: ``used`` is held by open orders, ``free`` what a new order may
    spend (``total - used`` on most venues; Kraken adds credit, see the ccxt adapter)."""

    asset: str
    free: Decimal
    used: Decimal
    total: Decimal

    def __post_init__(self) -> None:
        for name in ("free", "used", "total"):
            check_amount(name, getattr(self, name))
