"""The paper venue's partial-fill coin: a function of the order's client id and what is left of
it only, so a seed trades the same whenever it runs and the tier backtest can replay it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from mmops.adapters.paper.catalog import BY_SYMBOL
from mmops.adapters.paper.matching import PARTIAL_CHANCE, fill_quantity
from mmops.domain.ids import client_order_id

BTC = BY_SYMBOL["BTC/USD"].market
T0 = datetime(2026, 1, 5, 8, tzinfo=UTC)


@given(
    position=st.integers(min_value=1, max_value=10**6),
    lots=st.integers(min_value=1, max_value=10**9),
    shift=st.integers(min_value=1, max_value=10**9),
)
def test_the_coin_reads_no_time_and_a_half_is_a_positive_lot_multiple(
    position: int, lots: int, shift: int
) -> None:
    cid = client_order_id("S1", f"P-{position}", 0)
    remaining = lots * BTC.lot
    later = T0 + timedelta(microseconds=shift)
    qty = fill_quantity(cid, remaining, BTC, T0)
    assert qty == fill_quantity(cid, remaining, BTC, later)
    assert qty == fill_quantity(cid, remaining.quantize(Decimal("1E-12")), BTC, later)
    assert 0 < qty <= remaining and qty % BTC.lot == 0
    assert qty == remaining or qty == (remaining / 2 // BTC.lot) * BTC.lot


def test_about_the_partial_chance_of_orders_fill_half_at_a_crossing() -> None:
    remaining = Decimal("0.01000000")
    halves = sum(
        fill_quantity(client_order_id("S1", f"P-{n}", 0), remaining, BTC, T0) < remaining
        for n in range(2000)
    )
    assert abs(halves / 2000 - PARTIAL_CHANCE) < 0.04
