"""What a take-profit run reports, per pair: placed, skipped with a reason, failed with an error."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from mmops.domain.exchange import ExchangeOrder
from mmops.domain.models import Balance, Market, Ticker
from mmops.errors import BadRecordError


class SkipReason(StrEnum):
    DUST = "dust"  # below the market's minimums: reported, never placed
    INSUFFICIENT_BALANCE = "insufficient_balance"
    ALREADY_COVERED = "already_covered"
    ATTEMPT_IN_PROGRESS = "attempt_in_progress"  # another worker holds tp_attempt
    AWAITING_LOOKUP = "awaiting_lookup"  # an earlier placement's outcome is not known yet
    IN_FLIGHT = "in_flight"  # an order sent before its deadline (+ clock skew) may still land
    # The pair admits no new post-only sell (Kraken cancel_only / reduce_only); detail: status.
    PAIR_RESTRICTED = "pair_restricted"


# Reasons that leave a coverable position uncovered through no fault of the run.
BENIGN_SKIPS = frozenset(
    {
        SkipReason.DUST,
        SkipReason.ATTEMPT_IN_PROGRESS,
        SkipReason.ALREADY_COVERED,
        SkipReason.IN_FLIGHT,
    }
)


@dataclass(frozen=True, slots=True)
class MarketData:
    """One fetch of the exchange per settlement run, shared by every pair."""

    markets: dict[str, Market]
    tickers: dict[str, Ticker]
    balances: dict[str, Balance]
    # The account's open orders at the fetch (all pairs, one call), against which
    # reconciliation checks the take-profits mmops believes open; None: not fetched.
    open_orders: tuple[ExchangeOrder, ...] | None = None
    # When the balances were fetched (stamped before the call): other workers' reservations
    # placed at or after it are not in this snapshot. None: unknown, so the take-profit
    # service fetches the balances again before reserving (one more call).
    fetched_at: datetime | None = None

    @property
    def open_order_ids(self) -> frozenset[str] | None:
        return None if self.open_orders is None else frozenset(o.id for o in self.open_orders)


@dataclass(frozen=True, slots=True)
class Placed:
    position_id: str
    order_id: str
    client_order_id: str
    price: Decimal
    amount: Decimal
    tier_minutes: int
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Skipped:
    position_id: str
    reason: SkipReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Failed:
    position_id: str
    kind: str  # the error's class name
    error: str


@dataclass(slots=True)
class PairReport:
    symbol: str
    placed: list[Placed] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    recovered: int = 0  # earlier placements found on the exchange and recorded
    repriced: int = 0  # take-profits cancelled to be replaced at a lower tier
    released: Decimal = Decimal(0)  # base quantity those cancels freed on the exchange
    bad_records: int = 0  # positions that did not parse (quarantined, reported)
    # What reconciliation found and did (``ReconcileReport.counts`` of the pair): take-profits
    # checked, and one count per action (released, recorded_fill, absent, ...).
    reconciled: dict[str, int] = field(default_factory=dict)
    quarantined: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) of those
    error: str | None = None  # the whole pair failed

    def copy(self) -> PairReport:
        """A report of its own: adding to the copy's lists leaves this one as it is."""
        return replace(
            self, placed=list(self.placed), skipped=list(self.skipped), failed=list(self.failed),
            quarantined=list(self.quarantined), reconciled=dict(self.reconciled),
        )  # fmt: skip

    def quarantine(self, bad: Sequence[BadRecordError]) -> None:
        """Count records that did not parse and keep each one's key and reason."""
        self.bad_records += len(bad)
        self.quarantined.extend((b.key, b.reason) for b in bad)

    @property
    def left_uncovered(self) -> int:
        """Positions left uncovered for a reason other than dust or another worker's hold."""
        return len(self.failed) + sum(s.reason not in BENIGN_SKIPS for s in self.skipped)

    @property
    def ok(self) -> bool:
        return self.error is None and self.left_uncovered == 0 and self.bad_records == 0

    def counts(self) -> dict[str, int]:
        by_reason: dict[str, int] = {}
        for s in self.skipped:
            by_reason[s.reason.value] = by_reason.get(s.reason.value, 0) + 1
        return {
            "placed": len(self.placed),
            "skipped": len(self.skipped),
            "failed": len(self.failed) + (1 if self.error else 0),
            "recovered": self.recovered,
            "repriced": self.repriced,
            "bad_records": self.bad_records,
            "reconciled": self.reconciled.get("reconciled", 0),
            "released": self.reconciled.get("released", 0),
            "recorded_fill": self.reconciled.get("recorded_fill", 0),
            "unknown_orders": self.reconciled.get("reported_unknown", 0),
            "absent": self.reconciled.get("absent", 0),
            "lookup_failed": self.reconciled.get("lookup_failed", 0),
            **{f"skipped_{reason}": n for reason, n in sorted(by_reason.items())},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "counts": self.counts(),
            "error": self.error,
            "placed": [
                {"position": p.position_id, "order": p.order_id, "price": str(p.price),
                 "amount": str(p.amount), "tier": p.tier_minutes, "dry_run": p.dry_run}
                for p in self.placed
            ],
            "skipped": [
                {"position": s.position_id, "reason": s.reason.value, "detail": s.detail}
                for s in self.skipped
            ],
            "failed": [
                {"position": f.position_id, "kind": f.kind, "error": f.error} for f in self.failed
            ],
            "bad_records": [{"key": key, "reason": reason} for key, reason in self.quarantined],
        }  # fmt: skip
