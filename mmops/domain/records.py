"""Records that cross the store ports: bulk reads, take-profit coverage, settlement runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

from mmops.domain.models import Fill, Order, Position
from mmops.errors import BadRecordError

T = TypeVar("T")


@dataclass(slots=True)
class ReadResult(Generic[T]):
    """Records that parsed, and those that did not (to be quarantined, never dropped)."""

    items: list[T] = field(default_factory=list)
    bad: list[BadRecordError] = field(default_factory=list)
    sources: list[tuple[str, str]] = field(default_factory=list)  # (key, raw) of each item


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


@dataclass(frozen=True, slots=True)
class StagedOrder:
    order: Order
    key: str  # where it was read, for a reject
    raw: str


@dataclass(frozen=True, slots=True)
class StagedFill:
    fill: Fill
    key: str  # where it was read, for a reject
    raw: str


@dataclass(frozen=True, slots=True)
class FillMove:
    inserted: int
    orphans: int  # quarantined: their order does not exist
    staged: int

    @property
    def duplicates(self) -> int:
        """Staged fills already in PostgreSQL (a re-run, or a replay under another key)."""
        return self.staged - self.inserted - self.orphans
