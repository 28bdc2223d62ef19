"""Coverage: how much of each pair's coverable quantity live take-profits hold.

A position's coverable quantity is what it still holds (filled - closed) when that is at least
the market's minimum order (a smaller remainder is dust: it can never be sold on its own).
The share covered is covered / coverable over the pair; the oldest uncovered position is the
one whose uncovered quantity could be sold but is not covered, and its age is how long it has
waited. ``max_cover_delay_s`` is the longest time a position waited for its first take-profit.

Coverage is measured against the exchange: with a reconciler, a take-profit the exchange shows
closed without having sold (cancelled, expired, rejected) does not count as covering. The
reconciler runs read-only (a dry run); mmops's own notes are left as they are (settlement acts
on them, under the session's lock). A take-profit the exchange does not know, or could not be
asked about, is counted as ``unconfirmed`` (a quantity reported beside ``covered``), as
reconciliation leaves it alone: a venue other than the one asked (a demo's) holds it, or a
later look decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from mmops.domain.models import ZERO, Market, Session
from mmops.domain.pricing import dust_reason
from mmops.ports import Positions
from mmops.services.reconcile import Reconciler


@dataclass(frozen=True, slots=True)
class PairCoverage:
    symbol: str
    positions: int
    coverable_positions: int
    coverable: Decimal
    covered: Decimal
    oldest_uncovered_s: float | None
    max_cover_delay_s: float | None
    bad_records: int = 0
    uncovered_positions: int = 0  # coverable positions with a sellable uncovered remainder
    unconfirmed: Decimal = ZERO  # covered by take-profits the exchange did not confirm

    @property
    def percent(self) -> Decimal:
        if self.coverable == 0:
            return Decimal(100)
        return (self.covered / self.coverable * 100).quantize(Decimal("0.01"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "pair": self.symbol,
            "positions": self.positions,
            "coverable_positions": self.coverable_positions,
            "coverable": str(self.coverable),
            "covered": str(self.covered),
            "percent": str(self.percent),
            "oldest_uncovered_s": self.oldest_uncovered_s,
            "max_cover_delay_s": self.max_cover_delay_s,
            "bad_records": self.bad_records,
            "uncovered_positions": self.uncovered_positions,
            "unconfirmed": str(self.unconfirmed),
        }


class CoverageService:
    def __init__(self, positions: Positions, reconciler: Reconciler | None = None) -> None:
        self._positions = positions
        self._reconciler = reconciler

    async def session(
        self,
        session: Session,
        markets: Mapping[str, Market],
        now: datetime,
        pairs: Sequence[str] | None = None,
    ) -> list[PairCoverage]:
        """Coverage of the session's pairs (or of ``pairs``), against the exchange when a
        reconciler was given (one open-orders snapshot for the whole session)."""
        wanted = [p for p in session.pairs if pairs is None or p in pairs]
        not_live: Mapping[str, Decimal] = {}
        unconfirmed: Mapping[str, Decimal] = {}
        if self._reconciler is not None and wanted:
            report = await self._reconciler.session(session, wanted, dry_run=True)
            not_live, unconfirmed = report.not_live(), report.unconfirmed()
        return [
            await self.pair(session.id, p, markets[p], now, not_live, unconfirmed) for p in wanted
        ]

    async def pair(
        self,
        session_id: str,
        symbol: str,
        market: Market,
        now: datetime,
        not_live: Mapping[str, Decimal] | None = None,
        unconfirmed: Mapping[str, Decimal] | None = None,
    ) -> PairCoverage:
        """One pair's coverage; ``not_live`` (per position) is take-profit quantity recorded
        as covering that the exchange shows closed unsold, and does not count; ``unconfirmed``
        what the exchange did not confirm, reported."""
        not_live, unconfirmed = not_live or {}, unconfirmed or {}
        doubtful = ZERO
        read = await self._positions.all(session_id, symbol)
        coverable = covered = ZERO
        count = uncovered = 0
        oldest: datetime | None = None
        max_delay: float | None = None
        for p in read.items:
            held = p.filled - p.closed
            price = p.average_price or Decimal(1)
            if held <= 0 or dust_reason(held, price, market) is not None:
                continue
            count += 1
            coverable += held
            gone = not_live.get(p.position_id, ZERO)
            held_by_tps = max(ZERO, p.covered - gone) + p.pending_amount
            covered += min(held_by_tps, held)
            doubtful += min(unconfirmed.get(p.position_id, ZERO), held)
            if dust_reason(max(ZERO, held - held_by_tps), price, market) is None:
                uncovered += 1
                if oldest is None or p.opened_at < oldest:
                    oldest = p.opened_at
            if p.first_covered_at is not None:
                delay = max(0.0, (p.first_covered_at - p.opened_at).total_seconds())
                max_delay = delay if max_delay is None else max(max_delay, delay)
        return PairCoverage(
            symbol=symbol,
            positions=len(read.items),
            coverable_positions=count,
            coverable=coverable,
            covered=covered,
            oldest_uncovered_s=None if oldest is None else (now - oldest).total_seconds(),
            max_cover_delay_s=max_delay,
            bad_records=len(read.bad),
            uncovered_positions=uncovered,
            unconfirmed=doubtful,
        )
