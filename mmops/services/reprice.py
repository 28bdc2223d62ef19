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
from mmops.domain.tiers import TierPolicy
from mmops.errors import RECOVERABLE, OrderNotFound
from mmops.ports import Clock, Exchange, Positions
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
        self.released = Decimal(0)  # what the last cancel freed

    async def run(self, positions: Sequence[Position], report: PairReport) -> set[str]:
        """Cancel take-profits whose position has aged into a lower tier; return the ids of
        the positions whose coverage was released (they need a fresh read)."""
        now = self._clock.now()
        released: set[str] = set()
        for position in positions:
            if not position.take_profits or position.pending:
                continue
            table = self._tiers.for_pair(position.symbol)
            tier_now, _ = table.markup_at(age_in_minutes(position.opened_at, now))
            for order_id, _amount in position.take_profits:
                meta = await self._positions.tp_order(position.session_id, order_id)
                if meta.get("status") != "open" or not meta.get("tier"):
                    continue
                self.released = Decimal(0)
                if int(meta["tier"]) < tier_now and await self._cancel(position, order_id):
                    report.repriced += 1
                    report.released += self.released
                    released.add(position.position_id)
        return released

    async def _cancel(self, position: Position, order_id: str) -> bool:
        """Cancel a stale take-profit and release its coverage; True if it was replaced."""
        try:
            order = await self._exchange.cancel(position.symbol, order_id)
        except OrderNotFound:
            try:
                order = await self._exchange.fetch_order(position.symbol, order_id)
            except RECOVERABLE as e:
                log.warning("tp.reprice_failed", position=position.position_id, error=str(e))
                return False
        except RECOVERABLE as e:
            log.warning("tp.reprice_failed", position=position.position_id, error=str(e))
            return False
        if order.status is OrderStatus.FILLED:
            await self._positions.set_tp_status(position.session_id, order_id, "filled")
            return False
        await self._positions.release_coverage(position, order_id, "replaced", order.filled)
        self.released += order.remaining
        log.info("tp.repriced", session=position.session_id, pair=position.symbol,
                 position=position.position_id, order=order_id)  # fmt: skip
        return True
