"""FIFO P&L per (session, pair), portfolio equity, drawdown from the peak, stop-loss levels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.domain.models import Fill, Side
from mmops.domain.pnl import (
    DrawdownTracker,
    PairPnL,
    StopLossLevel,
    StopLossThresholds,
    drawdown,
    equity,
    fifo_pnl,
    stop_loss_level,
)

D = Decimal
T0 = datetime(2025, 1, 1, tzinfo=UTC)
BUY, SELL = Side.BUY, Side.SELL


def fill(n: int, side: Side, price: str, qty: str, fee: str = "0", symbol: str = "BTC/USD") -> Fill:
    """The ``n``-th fill of the session, ``n`` seconds after midnight."""
    return Fill(
        "S1", f"O{n}", symbol, side, D(price), D(qty), D(fee), T0 + timedelta(seconds=n), f"T{n}"
    )


def pnl(*fills: Fill) -> PairPnL:
    return fifo_pnl("S1", "BTC/USD", fills)


def test_a_round_trip_realizes_the_spread_less_both_fees() -> None:
    result = pnl(fill(1, BUY, "100", "2", fee="0.5"), fill(2, SELL, "110", "2", fee="0.55"))
    assert result.realized == D("20") - D("1.05")
    assert (result.open_quantity, result.open_cost, result.average_entry) == (D(0),) * 3
    assert result.fees == D("1.05")


def test_a_sell_is_matched_against_the_oldest_buy_first() -> None:
    result = pnl(fill(1, BUY, "100", "1"), fill(2, BUY, "120", "1"), fill(3, SELL, "130", "1"))
    assert result.realized == D("30")  # against 100, not 120
    assert (result.open_quantity, result.average_entry) == (D(1), D(120))


def test_a_sell_spanning_two_buys_matches_both_in_order() -> None:
    result = pnl(fill(1, BUY, "100", "1"), fill(2, BUY, "120", "1"), fill(3, SELL, "130", "1.5"))
    assert result.realized == D("30") + D("5")  # 1 @ 100, then 0.5 @ 120
    assert (result.open_quantity, result.open_cost) == (D("0.5"), D("60"))


def test_buy_fees_are_charged_when_paid_so_open_positions_show_them() -> None:
    result = pnl(fill(1, BUY, "100", "1", fee="0.25"))
    assert result.realized == D("-0.25") and result.average_entry == D(100)


def test_fills_are_matched_in_time_order_whatever_order_they_arrive_in() -> None:
    in_order = pnl(fill(1, BUY, "100", "1"), fill(2, BUY, "120", "1"), fill(3, SELL, "130", "1"))
    shuffled = pnl(fill(3, SELL, "130", "1"), fill(2, BUY, "120", "1"), fill(1, BUY, "100", "1"))
    assert shuffled == in_order


def test_a_fill_recorded_twice_counts_once() -> None:
    once = fill(1, BUY, "100", "1", fee="0.1")
    result = pnl(once, once, fill(2, SELL, "110", "1"))
    assert (result.fills, result.duplicates) == (2, 1)
    assert result.buy_volume == D(1) and result.realized == D("9.9")


def test_selling_more_than_was_bought_opens_a_short_that_a_later_buy_closes() -> None:
    short = pnl(fill(1, SELL, "110", "1"))
    assert (short.open_quantity, short.average_entry, short.realized) == (D(-1), D(110), D(0))
    assert short.unrealized(D(100)) == D(10)
    closed = pnl(fill(1, SELL, "110", "1"), fill(2, BUY, "100", "1"))
    assert (closed.open_quantity, closed.realized) == (D(0), D(10))


def test_volumes_and_notionals_are_summed_per_side() -> None:
    result = pnl(fill(1, BUY, "100", "2"), fill(2, SELL, "110", "0.5"), fill(3, SELL, "90", "0.5"))
    assert (result.buy_volume, result.buy_notional) == (D(2), D(200))
    assert (result.sell_volume, result.sell_notional) == (D(1), D(100))


def test_no_fills_is_a_flat_zero() -> None:
    zero = D(0)
    flat = PairPnL("S1", "BTC/USD", zero, zero, zero, zero, zero, zero, zero, zero, 0, 0)
    assert pnl() == flat


def test_a_fill_of_another_pair_or_session_is_refused() -> None:
    with pytest.raises(ValueError, match="ETH/USD"):
        pnl(fill(1, BUY, "100", "1", symbol="ETH/USD"))


def test_equity_is_capital_plus_realized_plus_unrealized_at_the_mark() -> None:
    btc = pnl(fill(1, BUY, "100", "2", fee="1"), fill(2, SELL, "110", "1"))  # realized 9
    eth = fifo_pnl("S1", "ETH/USD", [fill(3, BUY, "50", "1", symbol="ETH/USD")])
    assert equity(D(1000), [btc, eth], {"BTC/USD": D(95), "ETH/USD": D(60)}) == D(1000 + 9 - 5 + 10)


def test_a_flat_pair_needs_no_mark_but_an_open_one_does() -> None:
    flat = pnl(fill(1, BUY, "100", "1"), fill(2, SELL, "110", "1"))
    assert equity(D(1000), [flat], {}) == D(1010)
    with pytest.raises(ValueError, match="no mark for BTC/USD"):
        equity(D(1000), [pnl(fill(1, BUY, "100", "1"))], {})


def test_drawdown_is_measured_from_the_peak_not_from_the_capital() -> None:
    tracker = DrawdownTracker(peak=D(1000))
    tracker, first = tracker.observe(D(1100))
    tracker, second = tracker.observe(D(990))
    assert (first, tracker.peak, second) == (D(0), D(1100), D("0.1"))  # 10% of 1100, not 1% of 1000


def test_equity_at_or_above_the_peak_has_no_drawdown() -> None:
    assert drawdown(D(1000), D(1000)) == 0 and drawdown(D(1000), D(1200)) == 0


def test_a_drawdown_from_a_peak_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="peak equity must be > 0"):
        drawdown(D(0), D(-5))


@pytest.mark.parametrize(
    ("fraction", "level"),
    [
        ("0", StopLossLevel.NONE),
        ("0.0499", StopLossLevel.NONE),
        ("0.05", StopLossLevel.WARN),  # a threshold is reached when equalled
        ("0.0999", StopLossLevel.WARN),
        ("0.10", StopLossLevel.HALT),
        ("0.1499", StopLossLevel.HALT),
        ("0.15", StopLossLevel.FLATTEN),
        ("1", StopLossLevel.FLATTEN),
    ],
)
def test_the_highest_threshold_reached_sets_the_stop_loss_level(
    fraction: str, level: StopLossLevel
) -> None:
    assert stop_loss_level(D(fraction), StopLossThresholds()) is level


@pytest.mark.parametrize(
    ("warn", "halt", "flatten"),
    [("0", "0.1", "0.15"), ("0.1", "0.05", "0.15"), ("0.05", "0.1", "2")],
)
def test_thresholds_out_of_order_or_range_are_refused(warn: str, halt: str, flatten: str) -> None:
    with pytest.raises(ValueError, match="warn <= halt <= flatten"):
        StopLossThresholds(D(warn), D(halt), D(flatten))


prices = st.integers(min_value=1, max_value=10**7).map(lambda n: D(n).scaleb(-2))
quantities = st.integers(min_value=1, max_value=10**6).map(lambda n: D(n).scaleb(-6))
fees = st.integers(min_value=0, max_value=10**4).map(lambda n: D(n).scaleb(-4))


@st.composite
def long_only(draw: st.DrawFn) -> list[Fill]:
    """Buys and sells where no sell exceeds what is held at that moment."""
    fills, held = [], D(0)
    for n in range(draw(st.integers(min_value=0, max_value=20))):
        side = draw(st.sampled_from([BUY, SELL])) if held else BUY
        qty = draw(quantities) if side is BUY else min(draw(quantities), held)
        held += qty if side is BUY else -qty
        fills.append(fill(n, side, str(draw(prices)), str(qty), str(draw(fees))))
    return fills


@given(long_only())
def test_realized_is_sell_proceeds_less_the_cost_of_the_matched_buys_less_fees(
    fills: list[Fill],
) -> None:
    result = pnl(*fills)
    sold = sum((f.quantity for f in fills if f.side is SELL), D(0))
    matched_cost, to_match = D(0), sold
    for buy in (f for f in fills if f.side is BUY):  # FIFO: the first units bought
        take = min(buy.quantity, to_match)
        matched_cost += take * buy.price
        to_match -= take
    proceeds = sum((f.price * f.quantity for f in fills if f.side is SELL), D(0))
    assert result.realized == proceeds - matched_cost - sum((f.fee for f in fills), D(0))
    assert result.open_quantity == result.buy_volume - result.sell_volume >= 0


@given(
    st.lists(st.tuples(st.sampled_from([BUY, SELL]), prices, quantities, fees), max_size=20), prices
)
def test_realized_plus_unrealized_is_the_cash_flow_plus_the_marked_inventory(
    trades: list[tuple[Side, Decimal, Decimal, Decimal]], mark: Decimal
) -> None:
    """Holds with shorts too: FIFO only decides when P&L is realized, never how much."""
    result = pnl(*(fill(n, s, str(p), str(q), str(f)) for n, (s, p, q, f) in enumerate(trades)))
    cash = result.sell_notional - result.buy_notional - result.fees
    assert result.realized + result.unrealized(mark) == cash + result.open_quantity * mark


@given(st.integers(0, 10**4), st.integers(0, 10**4))
def test_the_stop_loss_level_never_falls_as_the_drawdown_deepens(a: int, b: int) -> None:
    low, high = sorted((D(a).scaleb(-4), D(b).scaleb(-4)))
    thresholds = StopLossThresholds()
    assert stop_loss_level(low, thresholds).severity <= stop_loss_level(high, thresholds).severity
