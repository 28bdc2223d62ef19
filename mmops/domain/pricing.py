"""The take-profit price of one position: a pure function of (position, age, market, ticker, tiers).

1. basis = (cost + buy fees) / filled quantity;
2. break-even = basis / (1 - the sell's maker fee);
3. target = break-even * (1 + the tier's markup at the position's age);
4. if target ≤ best bid, a post-only sell there would take: use the best ask;
5. price rounds up to the tick, amount (the uncovered quantity) down to the lot;
6. below the market's minimum amount or cost the position is dust: a result, not an error.

Each result carries every intermediate figure so a person can see why a price was chosen.
Divisions round toward +∞, so break-even and target are never understated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Context, Decimal
from enum import StrEnum
from typing import Any

from mmops.domain.models import Market, Position, Ticker, check_time
from mmops.domain.rounding import round_amount_down, round_price_up
from mmops.domain.tiers import TierTable

_MINUTE = timedelta(minutes=1)
_ONE = Decimal(1)
# The context of the divisions: the default context's 28 digits and traps, rounding toward
# +∞. Built once and used through its methods (cheaper than a ``localcontext()`` per price),
# so the caller's context plays no part.
_UP = Context(rounding=ROUND_CEILING)


class DustReason(StrEnum):
    ZERO_AMOUNT = "zero_amount"  # less than one lot is uncovered
    MIN_AMOUNT = "min_amount"  # below the market's minimum order size
    MIN_COST = "min_cost"  # price * amount below the market's minimum order value


@dataclass(frozen=True, slots=True)
class PriceExplanation:
    """The figures behind a take-profit price, shared by a quote and by dust."""

    session_id: str
    position_id: str
    symbol: str
    opened_at: datetime
    age_minutes: int
    tier_minutes: int  # the minimum age of the tier that applied
    markup: Decimal
    basis: Decimal  # cost per unit including buy fees
    break_even: Decimal  # the sell price that returns the basis after the maker fee
    target: Decimal  # break-even * (1 + markup)
    crossed: bool  # target ≤ best bid, so the best ask was used instead
    price: Decimal  # the final limit price, on the tick
    uncovered: Decimal
    amount: Decimal  # the uncovered quantity, on the lot


@dataclass(frozen=True, slots=True)
class TakeProfitQuote(PriceExplanation):
    """A take-profit that meets the market's minimums and can be placed."""

    @property
    def cost(self) -> Decimal:
        return self.price * self.amount


@dataclass(frozen=True, slots=True)
class Dust(PriceExplanation):
    """A position whose uncovered remainder is too small to sell; reported, never placed."""

    reason: DustReason


def age_in_minutes(opened_at: datetime, now: datetime) -> int:
    """Whole minutes from ``opened_at`` to ``now``, floored.

    A position stamped after ``now`` (clock skew between hosts) counts as age 0, the highest
    markup: the safe side. Raises ValueError if either time is naive.
    """
    check_time("opened_at", opened_at)
    check_time("now", now)
    return max(0, (now - opened_at) // _MINUTE)


def price_take_profit(
    position: Position, age_minutes: int, market: Market, ticker: Ticker, tiers: TierTable
) -> TakeProfitQuote | Dust:
    """Price the take-profit of ``position`` at ``age_minutes`` (see :func:`age_in_minutes`).

    Raises ValueError if position, market and ticker are for different pairs, if the position
    has no filled quantity (it has no basis), or if the age is negative.
    """
    _check_same_pair(position, market, ticker)
    if position.filled == 0:
        raise ValueError(f"position {position.position_id} has no filled quantity to price")
    tier_minutes, markup = tiers.markup_at(age_minutes)
    up = _UP
    basis = _plain(up.divide(up.add(position.cost, position.fees), position.filled))
    break_even = _plain(up.divide(basis, up.subtract(_ONE, market.maker_fee)))
    target = _plain(up.multiply(break_even, up.add(_ONE, markup)))
    crossed = target <= ticker.bid
    price = round_price_up(ticker.ask if crossed else target, market.tick)
    uncovered = position.uncovered
    amount = round_amount_down(uncovered, market.lot)
    # Any: the same figures go into either result class, checked by the dataclass at run time.
    figures: dict[str, Any] = dict(
        session_id=position.session_id,
        position_id=position.position_id,
        symbol=position.symbol,
        opened_at=position.opened_at,
        age_minutes=age_minutes,
        tier_minutes=tier_minutes,
        markup=markup,
        basis=basis,
        break_even=break_even,
        target=target,
        crossed=crossed,
        price=price,
        uncovered=uncovered,
        amount=amount,
    )
    reason = dust_reason(amount, price, market)
    if reason is None:
        return TakeProfitQuote(**figures)
    return Dust(**figures, reason=reason)


def dust_reason(amount: Decimal, price: Decimal, market: Market) -> DustReason | None:
    """Why an order of ``amount`` at ``price`` cannot be placed on ``market``, or None if it can."""
    if amount == 0:
        return DustReason.ZERO_AMOUNT
    if amount < market.min_amount:
        return DustReason.MIN_AMOUNT
    if amount * price < market.min_cost:
        return DustReason.MIN_COST
    return None


def _plain(value: Decimal) -> Decimal:
    """``value`` without a positive exponent, so an explanation reads 60000, not 6E+4.

    Only a whole number can have a positive exponent, and the test for one is far cheaper
    than reading the exponent (``as_tuple`` copies every digit), so most values return at once.
    """
    if value != value.to_integral_value(context=_UP):
        return value
    return value.quantize(_ONE, context=_UP) if int(value.as_tuple().exponent) > 0 else value


def _check_same_pair(position: Position, market: Market, ticker: Ticker) -> None:
    if not position.symbol == market.symbol == ticker.symbol:
        raise ValueError(
            f"pair mismatch: position {position.symbol}, market {market.symbol}, "
            f"ticker {ticker.symbol}"
        )
