"""Records that cross the store ports: bulk reads, take-profit coverage and metadata, the
settlement status and runs, migration rows and counts.

Each is a frozen value with enums for its states. The Redis codec
(``mmops.adapters.redis.codec``) is the one place they become strings and back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Generic, TypeVar

from mmops.domain.models import Order, PendingTakeProfit, Position
from mmops.domain.pnl import StopLossLevel
from mmops.errors import BadRecordError

T = TypeVar("T")


@dataclass(slots=True)
class ReadResult(Generic[T]):
    """Records that parsed, and those that did not (to be quarantined, never dropped)."""

    items: list[T] = field(default_factory=list)
    bad: list[BadRecordError] = field(default_factory=list)


class TpStatus(StrEnum):
    """A take-profit's state as mmops last recorded it (``tp_order:{S}:{O}`` ``status``)."""

    OPEN = "open"  # placed (or recovered) and covering its position
    FILLED = "filled"  # seen filled on the exchange: it keeps covering what it sold
    REPLACED = "replaced"  # cancelled by repricing; its coverage released
    CANCELED = "canceled"  # cancelled by the stop-loss; its coverage released
    GONE = "gone"  # cancelled by the exchange (e.g. a crossing post-only); coverage released


@dataclass(frozen=True, slots=True)
class TakeProfitRecord:
    """What mmops keeps about a placed take-profit (``tp_order:{S}:{O}``): where it came from,
    how it was priced, and its state."""

    position: str  # the position id (its buy order's id)
    pair: str
    price: Decimal
    amount: Decimal
    tier: int | None  # minutes of the tier it was priced at; None when recovered unpriced
    markup: Decimal | None  # the tier's markup; None when recovered unpriced
    client_order_id: str
    generation: int
    created_at: datetime
    status: TpStatus = TpStatus.OPEN
    amends: int = 0  # times repriced in place (the tier and markup above are the latest)


@dataclass(frozen=True, slots=True)
class Coverage:
    """A placed take-profit to record against the position it was priced from."""

    position: Position
    generation: int
    order_id: str
    amount: Decimal
    take_profit: TakeProfitRecord
    fully_covered: bool
    order: Order | None = None  # the take-profit as an order of its session, recorded with it


class RunState(StrEnum):
    """How a session's settlement run ended."""

    OK = "ok"
    PARTIAL = "partial"  # something was left undone (see docs/ARCHITECTURE.md)
    FAILED = "failed"  # every pair failed, or the session could not be settled
    LOCKED = "locked"  # another worker held the session; nothing recorded

    @property
    def ok(self) -> bool:
        return self in (RunState.OK, RunState.LOCKED)


@dataclass(frozen=True, slots=True)
class StopLossFigures:
    """What the stop-loss keeps between runs: the last measure and the level acted on."""

    equity: Decimal
    peak_equity: Decimal
    drawdown: Decimal
    level: StopLossLevel


@dataclass(frozen=True, slots=True)
class SettlementStatus:
    """A session's last settlement run as ``settlement:status:{S}`` holds it."""

    state: RunState
    placed: int
    skipped: int
    failed: int
    errors: tuple[str, ...]
    duration_ms: int
    finished_at: datetime
    worker: str
    dry_run: bool
    stoploss: StopLossFigures | None = None  # None until the stop-loss has measured once

    @property
    def stoploss_level(self) -> StopLossLevel | None:
        return None if self.stoploss is None else self.stoploss.level


@dataclass(frozen=True, slots=True)
class SettlementRun:
    session_id: str
    worker: str
    state: RunState
    started_at: datetime
    finished_at: datetime
    placed: int
    skipped: int
    failed: int
    dry_run: bool
    details: dict[str, Any]

    @property
    def duration_ms(self) -> int:
        return int((self.finished_at - self.started_at).total_seconds() * 1000)


class WorkKind(StrEnum):
    """The work shared between workers through leases (``work_leases.kind``)."""

    SETTLEMENT = "settlement"
    MIGRATION = "migration"


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One lease: a session, or one part of a big one (``work_leases.part``): ``g0``, ``g1``,
    ... a group of its pairs; ``''`` the whole session (or, for a split one, the work that
    needs all of it: reconciliation, the stop-loss and the status)."""

    session_id: str
    part: str = ""
    pairs: tuple[str, ...] = ()  # a group's pairs, as its lease row holds them
    groups: tuple[str, ...] = ()  # for part '': the session's group parts (none: not split)


class PriceSeries(StrEnum):
    """A session's two price records: the tickers of its settlement runs (``prices``), and the
    fill path the paper loop records at its venue's match steps (``price_path``)."""

    RUNS = "runs"
    PATH = "path"


class RejectKind(StrEnum):
    """The kind of record migration quarantined (``migration_rejects.kind``)."""

    ORDER = "order"
    FILL = "fill"
    PRICE = "price"  # analytics: neither an order nor a fill to completeness
    TAKE_PROFIT = "take_profit"


@dataclass(frozen=True, slots=True)
class Reject:
    kind: RejectKind
    symbol: str | None
    key: str
    raw: str
    reason: str


@dataclass(frozen=True, slots=True)
class PairRows:
    """What PostgreSQL holds of one pair of a session: its rows, and the records of each kind
    quarantined in ``migration_rejects``."""

    orders: int = 0
    fills: int = 0
    rejected: Mapping[RejectKind, int] = field(default_factory=dict)

    def rejects(self, kind: RejectKind) -> int:
        return self.rejected.get(kind, 0)


@dataclass(frozen=True, slots=True)
class MigrationCounts:
    """What PostgreSQL holds of a session, per pair (``?`` for rejects without a pair): what
    migration compares with the records it read from Redis."""

    pairs: Mapping[str, PairRows] = field(default_factory=dict)

    def pair(self, symbol: str) -> PairRows:
        return self.pairs.get(symbol, PairRows())


# Migration moves orders and fills as lines of tab-separated values (PostgreSQL COPY's text
# format: \N for none, backslash escapes), one per record that passed the domain's rules, with
# these columns: money as plain decimals, times as ISO 8601 in UTC, and last the record's key
# in Redis (where a reject points). The Redis codec writes them; the warehouse COPYs them in.
ORDER_LINE_COLUMNS = ("order_id", "session_id", "symbol", "side", "price", "amount", "filled",
                      "status", "kind", "client_order_id", "created_at", "redis_key")  # fmt: skip
FILL_LINE_COLUMNS = ("session_id", "order_id", "symbol", "side", "price", "quantity", "fee",
                     "timestamp", "trade_id", "redis_key")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Stray:
    """A staged record PostgreSQL cannot take as it is (a fill whose order does not exist, an
    order id already recorded under another pair): to be quarantined with its stored text."""

    symbol: str
    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class OrderMove:
    """What moving a session's staged orders into ``orders`` did."""

    written: int
    records: dict[str, int]  # per pair: the distinct Redis records staged
    strays: list[Stray]  # not written: copies of an order id recorded under another pair


@dataclass(frozen=True, slots=True)
class FillMove:
    """What moving a session's staged fills into ``fills`` did."""

    staged: int
    inserted: int
    distinct: dict[str, int]  # per pair: distinct executions among the fills whose order exists


@dataclass(slots=True)
class SessionLease:
    """This worker's hold on a session's settlement lock: the lock's token, checked by the
    fence before any order is sent, and ``lost``, set as soon as the lock is found taken
    (by the keeper or by the fence), after which nothing more is sent for the session."""

    session_id: str
    token: str
    lost: bool = False
    scope: str = ""  # the group of pairs whose lock this is ('' the whole session's)


@dataclass(frozen=True, slots=True)
class Fence:
    """One order about to be sent: its position as read, the pending marker to write (with
    the generation it was read at and its deadline) and the position's attempt token."""

    position: Position
    pending: PendingTakeProfit
    attempt_token: str


@dataclass(frozen=True, slots=True)
class FillEvent:
    """A new buy fill announced for settlement: its (session, pair) needs covering."""

    event_id: str
    session_id: str
    symbol: str


@dataclass(frozen=True, slots=True)
class AnalyticsCopy:
    """What the step read from Redis and what PostgreSQL holds of it afterwards."""

    session_id: str
    last_price_id: str | None  # the last price entry read (None: none new)
    prices_read: int  # distinct (pair, time) points read
    prices_held: int  # of those, rows in ``prices``
    prices_rejected: int
    take_profits_read: int
    take_profits_held: int  # of those, rows in ``take_profits`` with the state read
    take_profits_rejected: int
    last_path_id: str | None = None  # the same for the fill path (``price_path``)
    path_read: int = 0
    path_held: int = 0
    path_rejected: int = 0

    @property
    def rejected(self) -> int:
        """Records quarantined by the step, of every kind."""
        return self.prices_rejected + self.path_rejected + self.take_profits_rejected

    def mismatches(self) -> list[str]:
        found = []
        if self.prices_held != self.prices_read:
            found.append(f"prices: {self.prices_read} read, {self.prices_held} in PostgreSQL")
        if self.path_held != self.path_read:
            found.append(f"price_path: {self.path_read} read, {self.path_held} in PostgreSQL")
        if self.take_profits_held != self.take_profits_read:
            found.append(
                f"take_profits: {self.take_profits_read} read, "
                f"{self.take_profits_held} in PostgreSQL"
            )
        return found

    @property
    def ok(self) -> bool:
        return not self.mismatches()

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "prices": {"read": self.prices_read, "held": self.prices_held,
                       "rejected": self.prices_rejected},
            "price_path": {"read": self.path_read, "held": self.path_held,
                           "rejected": self.path_rejected},
            "take_profits": {"read": self.take_profits_read, "held": self.take_profits_held,
                             "rejected": self.take_profits_rejected},
            "mismatches": self.mismatches(),
        }  # fmt: skip
