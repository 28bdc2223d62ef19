"""Take-profit pricing: break-even, tier, crossing, tick and lot rounding, dust."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.domain.models import Market, PendingTakeProfit, Position, Ticker
from mmops.domain.pricing import (
    Dust,
    DustReason,
    TakeProfitQuote,
    age_in_minutes,
    price_take_profit,
)
from mmops.domain.rounding import is_multiple
from mmops.domain.tiers import DEFAULT_TIERS, TierTable

D = Decimal
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def market(
    symbol: str = "BTC/USD",
    tick: str = "0.1",
    lot: str = "0.00000001",
    min_amount: str = "0.00005",
    min_cost: str = "0.5",
    maker_fee: str = "0.0025",
) -> Market:
    base, quote = symbol.split("/")
    return Market(
        symbol, base, quote, D(tick), D(lot), D(min_amount), D(min_cost), D(maker_fee), D("0.004")
    )


def position(
    filled: str = "0.01",
    cost: str = "597.00",
    fees: str = "1.50",
    covered: str = "0",
    closed: str = "0",
    symbol: str = "BTC/USD",
) -> Position:
    """By default: basis 59850, so break-even after a 0.25% maker fee is exactly 60000."""
    return Position("S1", "P1", symbol, T0, D(filled), D(cost), D(fees), D(covered), D(closed))


def ticker(bid: str = "59990.0", ask: str = "60000.1", symbol: str = "BTC/USD") -> Ticker:
    return Ticker(symbol, D(bid), D(ask), T0)


def quote(
    age: int = 0, pos: Position | None = None, mkt: Market | None = None, tick: Ticker | None = None
) -> TakeProfitQuote:
    result = price_take_profit(
        pos or position(), age, mkt or market(), tick or ticker(), DEFAULT_TIERS
    )
    assert isinstance(result, TakeProfitQuote), result
    return result


def test_break_even_is_the_basis_with_buy_fees_grossed_up_by_the_sell_maker_fee() -> None:
    q = quote()
    assert q.basis == D("59850")  # (597.00 + 1.50) / 0.01
    assert q.break_even == D("60000")  # 59850 / (1 - 0.0025)
    assert q.target == D("60600")  # 60000 * 1.01


def test_at_59_minutes_the_first_tier_still_applies() -> None:
    q = quote(age=59)
    assert (q.tier_minutes, q.markup, q.price) == (0, D("0.01"), D("60600.0"))


def test_at_exactly_60_minutes_the_60_minute_tier_applies() -> None:
    q = quote(age=60)
    assert (q.tier_minutes, q.markup, q.price) == (60, D("0.006"), D("60360.0"))


def test_a_target_below_the_best_bid_moves_to_the_best_ask() -> None:
    q = quote(age=1440, tick=ticker(bid="60500.0", ask="60500.1"))
    assert q.target == D("60000") and q.crossed
    assert q.price == D("60500.1")


def test_a_target_exactly_at_the_best_bid_also_moves_to_the_ask() -> None:
    q = quote(age=1440, tick=ticker(bid="60000.0", ask="60000.1"))
    assert q.crossed and q.price == D("60000.1")


def test_a_target_above_the_best_bid_stays() -> None:
    q = quote(age=1440, tick=ticker(bid="59999.9", ask="60000.0"))
    assert not q.crossed and q.price == D("60000.0")


def test_the_price_rounds_up_on_a_tick_of_0_1_for_btc_usd() -> None:
    q = quote(age=240, pos=position(cost="600.00", fees="1.56"))
    assert D("60517.84") < q.target < D("60517.85")
    assert q.price == D("60517.9")


def test_the_price_rounds_up_on_a_tick_of_0_00001_for_xrp_usd() -> None:
    xrp = market("XRP/USD", tick="0.00001", min_amount="10")
    pos = position(filled="250", cost="131.2525", fees="0.32813", symbol="XRP/USD")
    q = quote(age=15, pos=pos, mkt=xrp, tick=ticker("0.52500", "0.52501", "XRP/USD"))
    assert D("0.532918") < q.target < D("0.532919")
    assert q.price == D("0.53292")


def test_the_amount_is_the_uncovered_quantity_rounded_down_to_the_lot() -> None:
    pos = position(
        filled="0.0123456789", cost="738.89", fees="1.85", covered="0.002", closed="0.001"
    )
    assert quote(pos=pos).amount == D("0.00934567")


def test_a_remainder_below_the_minimum_amount_is_dust_with_its_reason() -> None:
    result = price_take_profit(position(covered="0.00996"), 60, market(), ticker(), DEFAULT_TIERS)
    assert isinstance(result, Dust)
    assert result.reason is DustReason.MIN_AMOUNT
    assert (result.amount, result.price, result.break_even) == (
        D("0.00004"),
        D("60360.0"),
        D(60000),
    )


def test_a_remainder_below_the_minimum_cost_is_dust_with_its_reason() -> None:
    doge = market("DOGE/USD", tick="0.0000001", min_amount="50", min_cost="5")
    pos = position(filled="60", cost="4.8", fees="0.012", symbol="DOGE/USD")
    result = price_take_profit(
        pos, 0, doge, ticker("0.0790000", "0.0790001", "DOGE/USD"), DEFAULT_TIERS
    )
    assert isinstance(result, Dust) and result.reason is DustReason.MIN_COST
    assert result.amount * result.price < doge.min_cost


def test_less_than_one_lot_uncovered_is_zero_amount_dust() -> None:
    result = price_take_profit(
        position(covered="0.009999995"), 0, market(), ticker(), DEFAULT_TIERS
    )
    assert isinstance(result, Dust) and result.reason is DustReason.ZERO_AMOUNT


def test_a_fully_covered_position_is_zero_amount_dust() -> None:
    result = price_take_profit(position(covered="0.01"), 0, market(), ticker(), DEFAULT_TIERS)
    assert isinstance(result, Dust) and result.reason == "zero_amount"


def test_a_loss_tier_prices_below_break_even_only_because_it_was_allowed() -> None:
    losing = TierTable.parse({0: D("0.01"), 2880: D("-0.01")}, allow_loss=True)
    result = price_take_profit(position(), 3000, market(), ticker(bid="59000.0"), losing)
    assert isinstance(result, TakeProfitQuote)
    assert result.price == D("59400.0") < result.break_even


def test_the_quote_explains_itself() -> None:
    q = quote(age=75)
    assert (q.session_id, q.position_id, q.symbol, q.opened_at) == ("S1", "P1", "BTC/USD", T0)
    assert (q.age_minutes, q.tier_minutes, q.markup) == (75, 60, D("0.006"))
    assert (q.basis, q.break_even, q.target, q.crossed) == (D(59850), D(60000), D(60360), False)
    assert str(q.break_even) == "60000"  # not 6E+4
    assert q.cost == q.price * q.amount


def test_age_is_whole_minutes_since_opening_rounded_down() -> None:
    assert age_in_minutes(T0, T0 + timedelta(minutes=59, seconds=59)) == 59
    assert age_in_minutes(T0, T0 + timedelta(minutes=60)) == 60


def test_a_position_opened_in_the_future_by_clock_skew_is_age_zero() -> None:
    assert age_in_minutes(T0, T0 - timedelta(seconds=30)) == 0


def test_age_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        age_in_minutes(T0, datetime(2025, 1, 1, 13, 0))


def test_pricing_refuses_a_market_or_ticker_of_another_pair() -> None:
    with pytest.raises(ValueError, match="pair mismatch"):
        price_take_profit(position(), 0, market("ETH/USD"), ticker(), DEFAULT_TIERS)
    with pytest.raises(ValueError, match="pair mismatch"):
        price_take_profit(position(), 0, market(), ticker(symbol="ETH/USD"), DEFAULT_TIERS)


def test_pricing_refuses_a_position_with_nothing_filled() -> None:
    with pytest.raises(ValueError, match="no filled quantity"):
        price_take_profit(
            position(filled="0", cost="0", fees="0"), 0, market(), ticker(), DEFAULT_TIERS
        )


def scaled(low: int, high: int, places: int) -> st.SearchStrategy[Decimal]:
    return st.integers(min_value=low, max_value=high).map(lambda n: D(n).scaleb(-places))


@st.composite
def cases(draw: st.DrawFn) -> tuple[Position, int, Market, Ticker, TierTable]:
    tick = draw(st.sampled_from(["0.1", "0.01", "0.00001", "0.25", "5", "1"]))
    lot = draw(st.sampled_from(["0.00000001", "0.001", "0.5", "1"]))
    mkt = market(
        "ABC/USD",
        tick=tick,
        lot=lot,
        min_amount=str(draw(scaled(0, 10**6, 6))),
        min_cost=str(draw(scaled(0, 100, 1))),
        maker_fee=str(draw(scaled(0, 60, 4))),
    )
    filled = draw(scaled(1, 10**10, 8))
    unit = draw(scaled(1, 10**9, 5))
    pos = Position(
        "S1", "P1", "ABC/USD", T0, filled, filled * unit, draw(scaled(0, 10**6, 4)),
        draw(scaled(0, 10**10, 8)),  # covered: may exceed filled, then nothing is uncovered
    )  # fmt: skip
    bid = draw(scaled(1, 10**9, 5))
    tkr = Ticker("ABC/USD", bid, bid + D(tick) * draw(st.integers(1, 5)), T0)
    age = draw(st.integers(min_value=0, max_value=3000))
    return pos, age, mkt, tkr, DEFAULT_TIERS


@given(cases())
def test_with_non_negative_tiers_the_price_is_on_the_tick_and_not_below_break_even(
    case: tuple[Position, int, Market, Ticker, TierTable],
) -> None:
    result = price_take_profit(*case)
    _, _, mkt, tkr, _ = case
    assert is_multiple(result.price, mkt.tick)
    assert result.price >= result.break_even >= result.basis
    assert result.price > tkr.bid  # a post-only sell there never takes (ask > bid)


@given(cases())
def test_the_amount_is_on_the_lot_and_never_more_than_uncovered(
    case: tuple[Position, int, Market, Ticker, TierTable],
) -> None:
    result = price_take_profit(*case)
    pos, _, mkt, _, _ = case
    assert is_multiple(result.amount, mkt.lot)
    assert 0 <= result.amount <= pos.uncovered
    assert pos.uncovered - result.amount < mkt.lot


@given(cases())
def test_a_quote_meets_the_minimums_and_dust_says_which_it_misses(
    case: tuple[Position, int, Market, Ticker, TierTable],
) -> None:
    result = price_take_profit(*case)
    mkt = case[2]
    if isinstance(result, TakeProfitQuote):
        assert result.amount > 0
        assert result.amount >= mkt.min_amount and result.cost >= mkt.min_cost
    elif result.reason is DustReason.ZERO_AMOUNT:
        assert result.amount == 0
    elif result.reason is DustReason.MIN_AMOUNT:
        assert result.amount < mkt.min_amount
    else:
        assert result.amount * result.price < mkt.min_cost


# -- the fixed-context pricing gives what the localcontext() one gave ----------------------


def _reference_price(
    position: Position, age_minutes: int, market: Market, ticker: Ticker, tiers: TierTable
) -> TakeProfitQuote | Dust:
    """``price_take_profit`` as it was before it used one fixed context."""
    from decimal import ROUND_CEILING, localcontext

    from mmops.domain.pricing import dust_reason
    from mmops.domain.rounding import round_amount_down, round_price_up

    def plain(value: Decimal) -> Decimal:
        return value.quantize(Decimal(1)) if int(value.as_tuple().exponent) > 0 else value

    if not position.symbol == market.symbol == ticker.symbol:
        raise ValueError("pair mismatch")
    if position.filled == 0:
        raise ValueError(f"position {position.position_id} has no filled quantity to price")
    tier_minutes, markup = tiers.markup_at(age_minutes)
    with localcontext() as ctx:
        ctx.rounding = ROUND_CEILING
        basis = plain((position.cost + position.fees) / position.filled)
        break_even = plain(basis / (1 - market.maker_fee))
        target = plain(break_even * (1 + markup))
    crossed = target <= ticker.bid
    price = round_price_up(ticker.ask if crossed else target, market.tick)
    amount = round_amount_down(position.uncovered, market.lot)
    figures: dict[str, object] = dict(
        session_id=position.session_id, position_id=position.position_id,
        symbol=position.symbol, opened_at=position.opened_at, age_minutes=age_minutes,
        tier_minutes=tier_minutes, markup=markup, basis=basis, break_even=break_even,
        target=target, crossed=crossed, price=price, uncovered=position.uncovered, amount=amount,
    )  # fmt: skip
    reason = dust_reason(amount, price, market)
    if reason is None:
        return TakeProfitQuote(**figures)  # type: ignore[arg-type]
    return Dust(**figures, reason=reason)  # type: ignore[arg-type]


def _written(result: object) -> object:
    """A result as text, field by field: two results that print alike are alike."""
    if isinstance(result, Exception):
        return (type(result).__name__, str(result))
    import dataclasses

    fields = dataclasses.fields(result)  # type: ignore[arg-type]
    return (type(result).__name__, [(f.name, repr(getattr(result, f.name))) for f in fields])


# Whole numbers with trailing zeros (6E+4), zeros with exponents, -0, 28+ digit quotients.
amounts = st.builds(
    lambda digits, exponent: D((0, tuple(int(c) for c in str(digits)), exponent)),
    st.integers(min_value=0, max_value=10**30) | st.sampled_from([0, 1, 5, 25, 59850, 6]),
    st.integers(min_value=-30, max_value=12),
) | st.sampled_from([D("-0"), D("0E+3"), D("-0E-2")])


@st.composite
def wide_cases(draw: st.DrawFn) -> tuple[Position, int, Market, Ticker, TierTable]:
    pos, age, mkt, tkr, _ = draw(cases())
    filled = draw(amounts.filter(lambda a: a > 0))
    pending = tuple(
        PendingTakeProfit(i, f"c{i}", draw(amounts)) for i in range(draw(st.integers(0, 2)))
    )
    pos = Position(
        "S1", "P1", "ABC/USD", T0, filled, draw(amounts), draw(amounts), draw(amounts),
        draw(amounts), pending=pending,
    )  # fmt: skip
    tiers = draw(
        st.sampled_from(
            [
                DEFAULT_TIERS,
                TierTable.parse({0: D("0.01"), 60: D("-0.0105")}, allow_loss=True),
                TierTable.parse({0: D("0E+2")}),
            ]
        )
    )
    return pos, age, mkt, tkr, tiers


@given(wide_cases() | cases())
def test_pricing_gives_the_same_figures_and_errors_as_before(
    case: tuple[Position, int, Market, Ticker, TierTable],
) -> None:
    results = []
    for price in (price_take_profit, _reference_price):
        try:
            results.append(_written(price(*case)))
        except Exception as e:  # the error is the outcome compared
            results.append(_written(e))
    assert results[0] == results[1]


def test_pricing_is_the_same_in_any_context_of_the_caller() -> None:
    from decimal import ROUND_FLOOR, localcontext

    expected = quote(age=240, pos=position(cost="600.00", fees="1.56"))
    with localcontext() as ctx:
        ctx.prec, ctx.rounding = 5, ROUND_FLOOR
        assert quote(age=240, pos=position(cost="600.00", fees="1.56")) == expected
