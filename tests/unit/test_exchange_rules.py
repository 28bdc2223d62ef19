"""The checks every venue makes before placing: a batch is one pair and at most 15 orders; an
order lies on the market's tick and lot grid and meets its minimum amount and cost."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.domain.exchange import (
    MAX_BATCH,
    MarketRule,
    OrderRequest,
    broken_rule,
    check_batch,
)
from mmops.domain.models import Market, Side
from mmops.domain.rounding import is_multiple, round_amount_down, round_price_up

D = Decimal
BTC = Market(
    symbol="BTC/USD",
    base="BTC",
    quote="USD",
    tick=D("0.1"),
    lot=D("0.00000001"),
    min_amount=D("0.0001"),
    min_cost=D("0.5"),
    maker_fee=D("0.0025"),
    taker_fee=D("0.004"),
)


def sell(amount: str, price: str, symbol: str = "BTC/USD", n: int = 0) -> OrderRequest:
    return OrderRequest(
        symbol=symbol,
        side=Side.SELL,
        amount=D(amount),
        price=D(price),
        client_order_id=f"c-{n}",
    )


def test_a_batch_of_one_pair_up_to_the_limit_passes() -> None:
    check_batch([])
    check_batch([sell("0.001", "60000.0", n=i) for i in range(MAX_BATCH)])


def test_a_batch_over_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_BATCH} orders, got {MAX_BATCH + 1}"):
        check_batch([sell("0.001", "60000.0", n=i) for i in range(MAX_BATCH + 1)])


def test_a_batch_of_two_pairs_is_refused() -> None:
    with pytest.raises(ValueError, match="one pair only"):
        check_batch([sell("0.001", "60000.0"), sell("1", "3000.0", symbol="ETH/USD", n=1)])


@pytest.mark.parametrize(
    ("amount", "price", "broken"),
    [
        ("0.001", "60000.0", None),
        ("0.0001", "5000.0", None),  # exactly the minimum amount and exactly the minimum cost
        ("0.001", "60000.05", MarketRule.TICK_AND_LOT),  # price between two ticks
        ("0.000000015", "60000.0", MarketRule.TICK_AND_LOT),  # amount between two lots
        ("0.00009999", "60000.0", MarketRule.MINIMUM),  # below the minimum amount
        ("0.0001", "4999.9", MarketRule.MINIMUM),  # below the minimum cost
        ("0.000000015", "0.1", MarketRule.TICK_AND_LOT),  # both: the grid is reported first
    ],
)
def test_an_order_breaks_the_first_market_rule_it_misses(
    amount: str, price: str, broken: MarketRule | None
) -> None:
    assert broken_rule(sell(amount, price), BTC) is broken


steps = st.sampled_from([D("0.1"), D("0.00001"), D("0.25"), D("5"), D("1")])
units = st.integers(min_value=1, max_value=10**12).map(lambda n: D(n).scaleb(-6))


@st.composite
def markets(draw: st.DrawFn) -> Market:
    return Market(
        symbol="ABC/USD",
        base="ABC",
        quote="USD",
        tick=draw(steps),
        lot=draw(st.sampled_from([D("0.00000001"), D("0.001"), D("0.5"), D("1")])),
        min_amount=draw(st.integers(0, 10**6).map(lambda n: D(n).scaleb(-6))),
        min_cost=draw(st.integers(0, 1000).map(lambda n: D(n).scaleb(-1))),
        maker_fee=D("0.0025"),
        taker_fee=D("0.004"),
    )


@given(markets(), units, units)
def test_an_order_on_the_grid_breaks_at_most_the_minimum(
    market: Market, price: Decimal, amount: Decimal
) -> None:
    price, amount = round_price_up(price, market.tick), round_amount_down(amount, market.lot)
    if price == 0 or amount == 0:
        return
    order = sell(str(amount), str(price), symbol=market.symbol)
    below = amount < market.min_amount or amount * price < market.min_cost
    assert broken_rule(order, market) is (MarketRule.MINIMUM if below else None)


@given(markets(), units, units)
def test_an_order_off_the_grid_breaks_the_tick_and_lot_rule(
    market: Market, price: Decimal, amount: Decimal
) -> None:
    on_grid = is_multiple(price, market.tick) and is_multiple(amount, market.lot)
    broken = broken_rule(sell(str(amount), str(price), symbol=market.symbol), market)
    assert (broken is MarketRule.TICK_AND_LOT) is not on_grid
