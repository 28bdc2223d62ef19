"""Records that cross the store ports: bulk reads, take-profit coverage, settlement runs,
migration rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from mmops.domain.models import Order, Position
from mmops.errors import BadRecordError

T = TypeVar("T")


@dataclass(slots=True)
class ReadResult(Generic[T]):
    """Records that parsed, and those that did not (to be quarantined, never dropped)."""

    items: list[T] = field(default_factory=list)
    bad: list[BadRecordError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Coverage:
    """A placed take-profit to record against the position it was priced from."""

    position: Position
    generation: int
    order_id: str
    amount: Decimal
    metadata: dict[str, str]
    fully_covered: bool
    order: Order | None = None  # the take-profit as an order of its session, recorded with it


@dataclass(frozen=True, slots=True)
class SettlementRun:
    session_id: str
    worker: str
    state: str
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


@dataclass(frozen=True, slots=True)
class Reject:
    symbol: str | None
    key: str
    raw: str
    reason: str


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
