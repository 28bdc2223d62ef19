"""Profit and loss: FIFO matching per (session, pair), portfolio equity, drawdown, stop-loss.

Realized P&L matches each sell against the oldest open buys (first in, first out). Fees are
charged to realized P&L when paid, buy and sell alike: a fee is spent whatever later happens to
the lot, no fee is ever split (and rounded) between lots, and realized + unrealized is exactly
the change in equity. A sell beyond the open buys opens a short lot that later buys close, so
inventory from before the session never breaks the matching.

The stop-loss watches equity = capital + realized + unrealized at the best bid, measured from
the session's peak equity, against three fractional thresholds: warn, halt, flatten.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from mmops.domain.bounds import DIGITS, within_bounds
from mmops.domain.models import ZERO, Fill, Side


@dataclass(frozen=True, slots=True)
class PairPnL:
    """FIFO results of one (session, pair). Quantities in base, money in quote currency.

    ``open_quantity`` and ``open_cost`` are signed: positive for open buys, negative for a
    short (more sold than bought). ``duplicates`` counts replayed fills that were ignored.
    """

    session_id: str
    symbol: str
    realized: Decimal
    open_quantity: Decimal
    open_cost: Decimal
    fees: Decimal
    buy_volume: Decimal
    sell_volume: Decimal
    buy_notional: Decimal
    sell_notional: Decimal
    fills: int
    duplicates: int

    @property
    def average_entry(self) -> Decimal:
        """Average price of the open lots (fees excluded), 0 when flat."""
        return self.open_cost / self.open_quantity if self.open_quantity else ZERO

    def unrealized(self, mark: Decimal) -> Decimal:
        """What closing the open lots at ``mark`` would add to realized P&L (before fees)."""
        return self.open_quantity * mark - self.open_cost


@dataclass(slots=True)
class _Lot:
    side: Side
    quantity: Decimal
    price: Decimal


def fifo_pnl(session_id: str, symbol: str, fills: Iterable[Fill]) -> PairPnL:
    """FIFO P&L of ``fills`` of one session and pair, replayed in time order (equal times by
    order id, price and quantity).

    A fill recorded twice (same :attr:`Fill.key`) counts once. Raises ValueError if a fill
    belongs to another session or pair, or has an amount beyond the bound of every amount
    (:func:`refusal`): filter fills with :func:`refusal` first to leave such a fill out.
    """
    unique: dict[str, Fill] = {}
    seen = 0
    for fill in fills:
        reason = refusal(session_id, symbol, fill)
        if reason is not None:
            raise ValueError(reason)
        unique.setdefault(fill.key, fill)
        seen += 1
    ordered = sorted(unique.values(), key=_replay_order)
    lots: deque[_Lot] = deque()
    gross = sum((_match(lots, fill) for fill in ordered), ZERO)
    fees = sum((f.fee for f in ordered), ZERO)
    buys = [f for f in ordered if f.side is Side.BUY]
    sells = [f for f in ordered if f.side is Side.SELL]
    signed = [(lot.quantity if lot.side is Side.BUY else -lot.quantity, lot.price) for lot in lots]
    return PairPnL(
        session_id=session_id,
        symbol=symbol,
        realized=gross - fees,
        open_quantity=sum((q for q, _ in signed), ZERO),
        open_cost=sum((q * p for q, p in signed), ZERO),
        fees=fees,
        buy_volume=sum((f.quantity for f in buys), ZERO),
        sell_volume=sum((f.quantity for f in sells), ZERO),
        buy_notional=sum((f.price * f.quantity for f in buys), ZERO),
        sell_notional=sum((f.price * f.quantity for f in sells), ZERO),
        fills=len(ordered),
        duplicates=seen - len(ordered),
    )


def refusal(session_id: str, symbol: str, fill: Fill) -> str | None:
    """Why :func:`fifo_pnl` of ``session_id``/``symbol`` refuses ``fill``, or None if it takes
    it: a fill of another session or pair, or one with a price, quantity or fee beyond the
    bound of every amount (:mod:`mmops.domain.bounds`), whose products could overflow."""
    if (fill.session_id, fill.symbol) != (session_id, symbol):
        return f"fill {fill.key} is for {fill.session_id}/{fill.symbol}"
    if not all(within_bounds(v) for v in (fill.price, fill.quantity, fill.fee)):
        return f"fill {fill.key} has an amount with more than {DIGITS} digits on a side"
    return None


def _replay_order(fill: Fill) -> tuple[datetime, str, Decimal, Decimal]:
    """Time first; fills at the same instant by order id, price and quantity, so the result
    never depends on the order fills were read in (the warehouse's SQL replays the same way)."""
    return (fill.timestamp, fill.order_id, fill.price, fill.quantity)


def _match(lots: deque[_Lot], fill: Fill) -> Decimal:
    """Close the oldest opposite lots with ``fill``; return the gross P&L of what it closed."""
    left = fill.quantity
    gross = ZERO
    while left and lots and lots[0].side is not fill.side:
        lot = lots[0]
        quantity = min(left, lot.quantity)
        sold, bought = (
            (fill.price, lot.price) if fill.side is Side.SELL else (lot.price, fill.price)
        )
        gross += (sold - bought) * quantity
        lot.quantity -= quantity
        left -= quantity
        if not lot.quantity:
            lots.popleft()
    if left:
        lots.append(_Lot(fill.side, left, fill.price))
    return gross


def equity(capital: Decimal, pnls: Iterable[PairPnL], marks: Mapping[str, Decimal]) -> Decimal:
    """Capital + realized + unrealized over all pairs, each marked at ``marks[symbol]``.

    The mark is the best bid: what the open buys would fetch now. Raises ValueError if a pair
    with an open quantity has no mark, or if the equity is beyond the bound of every amount
    (it is recorded, and must read back).
    """
    total = capital
    for pnl in pnls:
        total += pnl.realized
        if pnl.open_quantity:
            if pnl.symbol not in marks:
                raise ValueError(f"no mark for {pnl.symbol}, which has open quantity")
            total += pnl.unrealized(marks[pnl.symbol])
    return _bounded("equity", total)


def drawdown(peak: Decimal, current: Decimal) -> Decimal:
    """The fraction of ``peak`` equity lost at ``current`` equity; 0 at or above the peak.

    Raises ValueError if ``peak`` is not positive: a drawdown from nothing has no meaning, and
    a session without capital cannot have a stop-loss; or if the drawdown is beyond the bound
    of every amount (it is recorded, and must read back).
    """
    if peak <= 0:
        raise ValueError(f"peak equity must be > 0 to measure a drawdown, got {peak}")
    return _bounded("drawdown", max(ZERO, (peak - current) / peak))


def _bounded(name: str, value: Decimal) -> Decimal:
    if not within_bounds(value):
        raise ValueError(f"{name} {value} has more than {DIGITS} digits on a side of the point")
    return value


@dataclass(frozen=True, slots=True)
class DrawdownTracker:
    """The session's peak equity so far; :meth:`observe` returns the next tracker, pure."""

    peak: Decimal

    def observe(self, current: Decimal) -> tuple[DrawdownTracker, Decimal]:
        """The tracker after seeing ``current`` equity, and the drawdown from the (new) peak."""
        peak = max(self.peak, current)
        return DrawdownTracker(peak), drawdown(peak, current)


class StopLossLevel(StrEnum):
    NONE = "none"
    WARN = "warn"  # alert a person
    HALT = "halt"  # tell the trading loop to stop buying
    FLATTEN = "flatten"  # cancel take-profits and exit positions

    @property
    def severity(self) -> int:
        return _SEVERITY.index(self)


_SEVERITY = (StopLossLevel.NONE, StopLossLevel.WARN, StopLossLevel.HALT, StopLossLevel.FLATTEN)


@dataclass(frozen=True, slots=True)
class StopLossThresholds:
    """Drawdown fractions at which each level is reached (inclusive).

    Raises ValueError unless 0 < warn ≤ halt ≤ flatten ≤ 1.
    """

    warn: Decimal = Decimal("0.05")
    halt: Decimal = Decimal("0.10")
    flatten: Decimal = Decimal("0.15")

    def __post_init__(self) -> None:
        if not 0 < self.warn <= self.halt <= self.flatten <= 1:
            raise ValueError(
                "stop-loss thresholds must satisfy 0 < warn <= halt <= flatten <= 1, got "
                f"warn={self.warn} halt={self.halt} flatten={self.flatten}"
            )


def stop_loss_level(fraction: Decimal, thresholds: StopLossThresholds) -> StopLossLevel:
    """The highest level whose threshold ``fraction`` (a drawdown) has reached."""
    if fraction >= thresholds.flatten:
        return StopLossLevel.FLATTEN
    if fraction >= thresholds.halt:
        return StopLossLevel.HALT
    if fraction >= thresholds.warn:
        return StopLossLevel.WARN
    return StopLossLevel.NONE
