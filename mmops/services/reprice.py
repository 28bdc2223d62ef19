"""Repricing: a take-profit priced at a younger tier is cancelled when its position ages into a
lower one, and the position becomes uncovered so the same run covers it at the new price.

Cancel first, replace after: a failed cancel leaves the old order covering the position; a
failed replacement leaves it uncovered for the next run. It is never covered twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from mmops import logs
from mmops.domain.models import OrderStatus, Position
from mmops.domain.pricing import age_in_minutes
from mmops.domain.records import TpStatus
from mmops.domain.tiers import TierPolicy
from mmops.errors import RECOVERABLE
from mmops.ports import Clock, Exchange, Positions, cancel_or_fetch
from mmops.services.tp_results import PairReport

log = logs.get_logger("mmops.reprice")


class Repricer:
    def __init__(
        self, positions: Positions, exchange: Exchange, tiers: TierPolicy, clock: Clock
    ) -> None:
        self._positions = positions
        self._exchange = exchange
        self._tiers = tiers
        self._clock = clock

    async def run(self, positions: Sequence[Position], report: PairReport) -> set[str]:
        """Cancel take-profits whose position has aged into a lower tier; return the ids of
        the positions whose coverage was released (they need a fresh read)."""
        candidates = [
            (p, order_id) for p in positions if not p.pending for order_id, _ in p.take_profits
        ]
        if not candidates:
            return set()
        read = await self._positions.tp_orders(
            candidates[0][0].session_id, [order_id for _, order_id in candidates]
        )
        report.bad_records += len(read.bad)
        for bad in read.bad:
            log.error("tp.bad_record", key=bad.key, reason=bad.reason)
        records = dict(read.items)
        now = self._clock.now()
        released: set[str] = set()
        for position, order_id in candidates:
            record = records.get(order_id)
            if record is None or record.status is not TpStatus.OPEN or record.tier is None:
                continue  # not recorded, no longer open, or recovered without its tier
            table = self._tiers.for_pair(position.symbol)
            tier_now, _ = table.markup_at(age_in_minutes(position.opened_at, now))
            if record.tier >= tier_now:
                continue
            freed = await self._cancel(position, order_id)
            if freed is not None:
                report.repriced += 1
                report.released += freed
                released.add(position.position_id)
        return released

    async def _cancel(self, position: Position, order_id: str) -> Decimal | None:
        """Cancel a stale take-profit and release its coverage; return the base quantity the
        cancel freed on the exchange, or None if it was not cancelled (filled, or an error)."""
        try:
            order = await cancel_or_fetch(self._exchange, position.symbol, order_id)
        except RECOVERABLE as e:
            log.warning("tp.reprice_failed", position=position.position_id, error=str(e))
            return None
        if order.status is OrderStatus.FILLED:
            await self._positions.set_tp_status(position.session_id, order_id, TpStatus.FILLED)
            return None
        await self._positions.release_coverage(position, order_id, TpStatus.REPLACED, order.filled)
        log.info("tp.repriced", session=position.session_id, pair=position.symbol,
                 position=position.position_id, order=order_id)  # fmt: skip
        return order.remaining
