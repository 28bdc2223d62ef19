"""Repricing: a take-profit priced at a younger tier is moved to its position's current tier
when the position ages into a lower one.

Amend first: the order's price is changed in place (Kraken's AmendOrder; same order, same
client id), so the position stays covered throughout and the record takes the new price and
tier. Only when the amend is refused (a post-only amend that would cross, a venue that cannot
amend, no market data) is it cancelled and the position released, so the same run covers it
anew. Cancel first, replace after: a failed cancel leaves the old order covering the position; a
cancel answered *pending* is not a release (the order may still fill) until a later run sees it
cancelled; a failed replacement leaves it uncovered for the next run. Never covered twice.

Whether a take-profit is still live on the exchange is reconciliation's question
(``mmops.services.reconcile``), which settlement asks before repricing: the take-profits a
repricer sees are those the exchange showed open, or had not yet been checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal

from mmops import logs
from mmops.domain.models import ZERO, OrderStatus, Position
from mmops.domain.pricing import Dust, age_in_minutes, price_take_profit
from mmops.domain.records import TakeProfitRecord, TpStatus
from mmops.domain.tiers import TierPolicy
from mmops.errors import RECOVERABLE
from mmops.ports import Clock, Exchange, Positions, cancel_or_fetch
from mmops.services.tp_results import MarketData, PairReport

log = logs.get_logger("mmops.reprice")


class Repricer:
    def __init__(
        self, positions: Positions, exchange: Exchange, tiers: TierPolicy, clock: Clock
    ) -> None:
        self._positions = positions
        self._exchange = exchange
        self._tiers = tiers
        self._clock = clock

    async def run(
        self, positions: Sequence[Position], report: PairReport, data: MarketData | None = None
    ) -> set[str]:
        """Reprice take-profits whose position has aged into a lower tier (amended in place
        with ``data``, else cancelled); return the ids of the positions whose coverage was
        released (they need a fresh read)."""
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
        records = {oid: r for oid, r in read.items if r.status is TpStatus.OPEN}
        live = [(p, oid) for p, oid in candidates if oid in records]
        released: set[str] = set()
        now = self._clock.now()
        for position, order_id in live:
            record = records[order_id]
            if record.tier is None:
                continue  # recovered without its tier
            table = self._tiers.for_pair(position.symbol)
            tier_now, _ = table.markup_at(age_in_minutes(position.opened_at, now))
            if record.tier >= tier_now:
                continue
            amended = await self._amend(position, order_id, record, data)
            if amended is None:  # the new tier's price makes it dust: keep the one there
                continue
            if amended:
                report.repriced += 1
                continue
            freed = await self._cancel(position, order_id)
            if freed is not None:
                report.repriced += 1
                report.released += freed
                released.add(position.position_id)
        return released

    async def _amend(
        self,
        position: Position,
        order_id: str,
        record: TakeProfitRecord,
        data: MarketData | None,
    ) -> bool | None:
        """Move the take-profit to its current tier's price in place. False when it was not
        amended (no market data, refused, or not open) and the caller falls back to
        cancel/replace; None when the new price would be dust, so no replacement could be
        placed and the take-profit already resting is kept."""
        market = data.markets.get(position.symbol) if data else None
        ticker = data.tickers.get(position.symbol) if data else None
        if market is None or ticker is None:
            return False
        age = age_in_minutes(position.opened_at, self._clock.now())
        table = self._tiers.for_pair(position.symbol)
        quote = price_take_profit(_as_uncovered(position, record), age, market, ticker, table)
        if isinstance(quote, Dust):
            return None
        try:
            order = await self._exchange.amend(position.symbol, order_id, quote.price)
        except RECOVERABLE as e:
            log.info("tp.amend_refused", position=position.position_id, error=str(e))
            return False
        await self._positions.amend_tp(
            position.session_id, order_id, order.price, quote.tier_minutes, quote.markup
        )
        log.info("tp.amended", session=position.session_id, pair=position.symbol,
                 position=position.position_id, order=order_id, price=str(order.price),
                 tier=quote.tier_minutes)  # fmt: skip
        return True

    async def _cancel(self, position: Position, order_id: str) -> Decimal | None:
        """Cancel a stale take-profit and release its coverage; return the base quantity the
        cancel freed on the exchange, or None if it was not released (filled, a cancel still
        pending, or an error)."""
        try:
            order = await cancel_or_fetch(self._exchange, position.symbol, order_id)
        except RECOVERABLE as e:
            log.warning("tp.reprice_failed", position=position.position_id, error=str(e))
            return None
        if order.status is OrderStatus.FILLED:
            await self._positions.set_tp_status(position.session_id, order_id, TpStatus.FILLED)
            return None
        if order.status is OrderStatus.OPEN:  # the cancel is pending: it still covers
            log.info("tp.cancel_pending", session=position.session_id,
                     position=position.position_id, order=order_id)  # fmt: skip
            return None
        await self._positions.release_coverage(position, order_id, TpStatus.REPLACED, order.filled)
        log.info("tp.repriced", session=position.session_id, pair=position.symbol,
                 position=position.position_id, order=order_id)  # fmt: skip
        return order.remaining


def _as_uncovered(position: Position, record: TakeProfitRecord) -> Position:
    """The position as if its take-profit were not there, to price the take-profit anew."""
    return replace(position, covered=max(ZERO, position.covered - record.amount))
