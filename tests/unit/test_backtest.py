"""The tier backtest's replay: placement, repricing and fills as settlement and the paper venue
do them, with the pricing code settlement uses; and its figures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal, localcontext

import pytest
import typer
from hypothesis import given, settings
from hypothesis import strategies as st

from mmops.domain.backtest import (
    BuyFill,
    PricePoint,
    RealSell,
    Replay,
    ReplayData,
    hours,
    replay,
)
from mmops.domain.backtest_stats import (
    Verdict,
    confidence,
    percentile,
    ranked,
    reproduction,
    summarize,
)
from mmops.domain.ids import client_order_id
from mmops.domain.models import Market
from mmops.domain.tiers import DEFAULT_TIERS, TierTable
from mmops.entrypoints.cli_tiers import parse_tables

D = Decimal
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
BTC = Market("BTC/USD", "BTC", "USD", D("0.1"), D("0.00000001"), D("0.0001"), D("0.5"),
             D("0.0025"), D("0.004"))  # fmt: skip
MARKETS = {"BTC/USD": BTC}
FLAT = TierTable.parse({0: D("0.01")})


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def point(minutes: float, bid: str, ask: str | None = None) -> PricePoint:
    b = D(bid)
    return PricePoint("BTC/USD", at(minutes), b, D(ask) if ask else b + D("0.1"))


def buy(pid: str = "B1", minutes: float = 0, qty: str = "0.01", price: str = "59850",
        fee: str = "1.5") -> BuyFill:  # fmt: skip
    """By default: cost 598.5 + fee 1.5 = 600 for 0.01, a basis of exactly 60000."""
    return BuyFill(pid, "BTC/USD", at(minutes), D(price), D(qty), D(fee))


def target(basis: str, markup: str) -> Decimal:
    """The take-profit price by hand: basis / (1 - fee) * (1 + markup), up to the tick."""
    with localcontext() as ctx:
        ctx.rounding = ROUND_CEILING
        raw = D(basis) / (1 - BTC.maker_fee) * (1 + D(markup))
    return (raw / BTC.tick).to_integral_value(rounding=ROUND_CEILING) * BTC.tick


def data(buys: list[BuyFill], runs: list[PricePoint], **kw: object) -> ReplayData:
    return ReplayData("S1", MARKETS, tuple(buys), tuple(runs), **kw)  # type: ignore[arg-type]


def test_a_take_profit_fills_at_its_price_on_the_first_later_run_whose_bid_reaches_it() -> None:
    price = target("60000", "0.01")  # 60752.0
    runs = [point(1, "60000"), point(4, str(price - 1)), point(7, str(price)), point(10, "61000")]
    [pos] = replay(data([buy()], runs), FLAT).positions
    [fill] = pos.fills
    assert (fill.at, fill.price, fill.quantity) == (at(7), price, D("0.01"))
    assert fill.fee == price * D("0.01") * D("0.0025")
    assert pos.realized_pnl == price * D("0.01") - fill.fee - D("600")
    assert pos.closed and pos.open_quantity == 0
    # 600 of inventory held from the buy (minute 0) to the fill (minute 7).
    assert pos.inventory_hours == D(600) * hours(timedelta(minutes=7))


def test_a_sell_placed_at_a_run_cannot_fill_on_that_runs_price() -> None:
    """Post-only: a take-profit is priced above the bid it was placed at; when its target is
    at or below the bid it is placed at the ask, which fills only when a later bid reaches it."""
    runs = [point(1, "70000", "70000.1"), point(4, "70000", "70000.1"), point(7, "70000.1")]
    [pos] = replay(data([buy()], runs), FLAT).positions
    [fill] = pos.fills
    assert pos.crossed
    assert (fill.at, fill.price) == (at(7), D("70000.1"))


def test_an_aged_take_profit_is_amended_to_its_new_tier_and_fills_there() -> None:
    tiers = TierTable.parse({0: D("0.01"), 60: D("0.002")})
    low = target("60000", "0.002")
    runs = [point(1, "60000"), point(30, str(low)), point(61, "60000"), point(64, str(low))]
    [pos] = replay(data([buy()], runs), tiers).positions
    [fill] = pos.fills
    assert (fill.at, fill.price, fill.tier_minutes, fill.markup) == (at(64), low, 60, D("0.002"))


def test_later_buy_fills_of_a_position_are_covered_by_a_second_take_profit() -> None:
    runs = [point(1, "60000"), point(5, "60000"), point(9, "65000")]
    buys = [buy(minutes=0), buy(minutes=3, qty="0.005", price="59900", fee="0.75")]
    [pos] = replay(data(buys, runs), FLAT).positions
    assert pos.bought == D("0.015")
    assert sorted(f.quantity for f in pos.fills) == [D("0.005"), D("0.01")]
    # Each take-profit is priced on the basis at its run: 60000, then (600 + 300.25) / 0.015.
    prices = sorted(f.price for f in pos.fills)
    assert prices == sorted([target("60000", "0.01"), target(str(D("900.25") / D("0.015")),
                                                             "0.01")])  # fmt: skip


def test_a_buy_after_the_last_run_stays_open_and_a_tiny_one_is_dust() -> None:
    runs = [point(1, "60000"), point(4, "60000")]
    buys = [buy("LATE", minutes=5), buy("TINY", minutes=0, qty="0.00005", price="60000", fee="0")]
    positions = {p.position_id: p for p in replay(data(buys, runs), FLAT).positions}
    assert positions["LATE"].open_quantity == D("0.01") and not positions["LATE"].fills
    assert positions["TINY"].dust and positions["TINY"].dust_quantity == D("0.00005")
    figures = summarize("flat", replay(data(buys, runs), FLAT))
    assert (figures.positions, figures.dust_positions, figures.open_positions) == (1, 1, 1)


def test_a_denser_fill_path_sees_a_crossing_between_two_runs() -> None:
    price = target("60000", "0.01")
    runs = [point(1, "60000"), point(4, "60000"), point(7, "60000")]
    path = [point(2, "60000"), point(3, str(price)), point(5, "60000")]
    on_runs = replay(data([buy()], runs), FLAT).positions[0]
    on_path = replay(data([buy()], runs, path=tuple(path)), FLAT).positions[0]
    assert not on_runs.fills
    assert [f.at for f in on_path.fills] == [at(3)]


def test_a_fill_model_fills_part_of_a_take_profit_at_a_crossing_and_the_rest_later() -> None:
    price = target("60000", "0.01")
    asked: list[tuple[str, Decimal, datetime]] = []

    def half_first(client_id: str, left: Decimal, market: Market, when: datetime) -> Decimal:
        asked.append((client_id, left, when))
        return D("0.004") if left == D("0.01") else left

    runs = [point(1, "60000"), point(4, str(price)), point(7, str(price + 5))]
    [pos] = replay(data([buy()], runs), FLAT, half_first).positions
    assert [(f.at, f.quantity) for f in pos.fills] == [(at(4), D("0.004")), (at(7), D("0.006"))]
    assert asked == [(client_order_id("S1", "B1", 0), D("0.01"), at(4)),
                     (client_order_id("S1", "B1", 0), D("0.006"), at(7))]  # fmt: skip
    assert pos.closed
    # Stopped after the first crossing: what is left of the order is still open.
    [early] = replay(data([buy()], runs[:2]), FLAT, half_first).positions
    assert (early.sold, early.open_quantity, early.closed) == (D("0.004"), D("0.006"), False)


def test_the_kth_take_profit_of_a_position_has_the_kth_client_id() -> None:
    price = target("60000", "0.01")
    seen: list[str] = []

    def whole(client_id: str, left: Decimal, market: Market, when: datetime) -> Decimal:
        seen.append(client_id)
        return left

    buys = [buy(minutes=0, qty="0.005", price="59850", fee="0.75"), buy(minutes=2, qty="0.005",
            price="59850", fee="0.75")]  # fmt: skip
    runs = [point(1, "60000"), point(3, "60000"), point(6, str(price))]
    [pos] = replay(data(buys, runs), FLAT, whole).positions
    assert seen == [client_order_id("S1", "B1", 0), client_order_id("S1", "B1", 1)]
    assert pos.sold == D("0.01")


@pytest.mark.parametrize("answer", ["0", "-0.001", "0.02"])
def test_a_fill_model_answering_nothing_or_more_than_is_left_is_refused(answer: str) -> None:
    runs = [point(1, "60000"), point(4, "70000")]
    with pytest.raises(ValueError, match="fill model"):
        replay(data([buy()], runs), FLAT, lambda *_: D(answer))


def test_the_default_table_is_applied_per_pair_through_a_policy() -> None:
    runs = [point(1, "60000"), point(4, "70000")]
    [pos] = replay(data([buy()], runs), DEFAULT_TIERS).positions
    assert pos.fills[0].markup == D("0.01") and pos.fills[0].price == target("60000", "0.01")


def test_a_market_is_required_for_every_pair() -> None:
    with pytest.raises(ValueError, match="no market for ETH/USD"):
        ReplayData("S1", MARKETS, (), (PricePoint("ETH/USD", T0, D(1), D(2)),))


# -- properties -----------------------------------------------------------------------------

markups = st.decimals(min_value=D("0"), max_value=D("0.03"), places=4)
deltas = st.decimals(min_value=D("0"), max_value=D("0.02"), places=4)
bids = st.decimals(min_value=D("58000"), max_value=D("63000"), places=1)


@st.composite
def sessions(draw: st.DrawFn) -> ReplayData:
    n_runs = draw(st.integers(min_value=1, max_value=25))
    runs = [point(3 * i + 1, str(draw(bids))) for i in range(n_runs)]
    n_buys = draw(st.integers(min_value=0, max_value=6))
    buys = [
        buy(f"P{i}", minutes=draw(st.integers(0, 3 * n_runs)),
            qty=str(draw(st.decimals(D("0.001"), D("0.05"), places=4))),
            price=str(draw(st.decimals(D("59000"), D("61000"), places=1))), fee="0.1")
        for i in range(n_buys)
    ]  # fmt: skip
    return data(buys, runs)


@st.composite
def table_pairs(draw: st.DrawFn) -> tuple[TierTable, TierTable]:
    """A table and one with a markup at least as high at every tier (same ages)."""
    ages = sorted({0, *draw(st.lists(st.integers(1, 90), max_size=3))})
    low = sorted(draw(st.lists(markups, min_size=len(ages), max_size=len(ages))), reverse=True)
    add = sorted(draw(st.lists(deltas, min_size=len(ages), max_size=len(ages))), reverse=True)
    high = [min(D("0.9"), m + a) for m, a in zip(low, add, strict=True)]
    return (TierTable.parse(dict(zip(ages, low, strict=True))),
            TierTable.parse(dict(zip(ages, high, strict=True))))  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(sessions(), table_pairs())
def test_a_table_with_higher_markups_never_fills_a_position_more_or_sooner(
    session: ReplayData, tables: tuple[TierTable, TierTable]
) -> None:
    """Per position whose quotes were never at the ask nor dust under either table (there a
    higher target can sit below the ask, or clear the minimum cost; see the next test)."""
    low, high = (replay(session, t) for t in tables)
    for a, b in zip(low.positions, high.positions, strict=True):
        assert a.position_id == b.position_id
        if a.crossed or b.crossed or a.dust or b.dust:
            continue
        assert b.sold <= a.sold
        if b.fills:
            assert b.last_fill_at is not None and a.last_fill_at is not None
            assert min(f.at for f in b.fills) >= min(f.at for f in a.fills)
    plain = all(not (p.crossed or p.dust) for r in (low, high) for p in r.positions)
    if plain:
        assert summarize("b", high).tp_fills <= summarize("a", low).tp_fills


def test_a_higher_target_between_bid_and_ask_sells_where_the_lower_one_waits_at_the_ask() -> None:
    """The post-only rule's one inversion, real on the venue too: 0% targets the break-even
    (60150.4), at or below the bid 60200, so it is placed at the ask 60300; 0.2% targets
    60270.7, above the bid, placed there, and fills when the bid reaches 60280."""
    runs = [point(1, "60200", "60300"), point(4, "60280", "60290")]
    zero, some = (replay(data([buy()], runs), TierTable.parse({0: D(m)})) for m in ("0", "0.002"))
    assert not zero.positions[0].fills and zero.positions[0].crossed
    assert some.positions[0].fills and not some.positions[0].crossed


@settings(max_examples=100, deadline=None)
@given(st.lists(bids, max_size=20), table_pairs())
def test_no_positions_give_zero_everything(prices: list[Decimal], tables: tuple) -> None:
    runs = [point(3 * i, str(b)) for i, b in enumerate(prices)]
    figures = summarize("t", replay(data([], runs), tables[0]))
    assert (figures.positions, figures.tp_fills, figures.closed_positions) == (0, 0, 0)
    assert figures.realized_pnl == 0 and figures.inventory_hours == 0
    assert figures.fill_rate is None and figures.pnl_per_inventory_hour is None


@settings(max_examples=100, deadline=None)
@given(sessions(), table_pairs())
def test_every_money_figure_is_a_decimal(session: ReplayData, tables: tuple) -> None:
    result = replay(session, tables[0])
    figures = summarize("t", result)
    money = [figures.realized_pnl, figures.inventory_hours]
    money += [v for v in (figures.fill_rate, figures.realized_markup,
                          figures.pnl_per_inventory_hour) if v is not None]  # fmt: skip
    for p in result.positions:
        money += [p.realized_pnl, p.inventory_hours, p.open_quantity, p.dust_quantity]
        money += [x for f in p.fills for x in (f.price, f.quantity, f.fee, f.basis)]
    assert all(type(v) is Decimal for v in money)
    # Nothing sells more than was bought.
    assert all(p.sold + p.open_quantity + p.dust_quantity <= p.bought for p in result.positions)


# -- figures ---------------------------------------------------------------------------------


def test_percentile_is_the_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([10], 90) == 10
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50) == 5
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90) == 9


def many(n: int) -> ReplayData:
    """``n`` positions, one every 3 minutes, and a price rising 0.5% above each buy later."""
    buys = [buy(f"P{i}", minutes=3 * i) for i in range(n)]
    runs = [point(3 * i + 1, "60000") for i in range(n + 40)]
    runs += [point(3 * (n + 40) + 1, "60500")]
    return data(buys, runs)


def test_a_table_that_sells_beats_one_that_never_does_with_confidence() -> None:
    session = many(30)
    sells = replay(session, TierTable.parse({0: D("0.003")}))
    never = replay(session, TierTable.parse({0: D("0.05")}))
    figures = [summarize("never", never), summarize("sells", sells)]
    assert [f.label for f in ranked(figures)] == ["sells", "never"]
    assert figures[1].fill_rate == 1 and figures[0].fill_rate == 0
    assert figures[1].realized_markup is not None and figures[1].realized_markup > 0
    [c] = confidence(never, {"sells": sells}, resamples=200)
    assert c.verdict is Verdict.BETTER and c.low is not None and c.low > 0
    assert c.ahead_share == 1


def test_too_few_positions_give_no_verdict() -> None:
    session = many(3)
    sells = replay(session, TierTable.parse({0: D("0.003")}))
    never = replay(session, TierTable.parse({0: D("0.05")}))
    [c] = confidence(never, {"sells": sells}, resamples=200)
    assert c.verdict is Verdict.UNCLEAR and c.positions == 3


def test_the_same_table_reproduces_its_own_fills() -> None:
    session = many(12)
    result = replay(session, TierTable.parse({0: D("0.003")}))
    real = [RealSell(f.position_id, f.symbol, f.at, f.price, f.quantity, f.fee)
            for p in result.positions for f in p.fills]  # fmt: skip
    r = reproduction(result, real, MARKETS)
    assert r.real_sold == r.matched == 12 and r.rate == 1
    assert r.real_pnl == r.replay_pnl and set(r.delays_s) == {0}
    shifted = [RealSell(s.position_id, s.symbol, s.at, s.price + D("0.1"), s.quantity, s.fee)
               for s in real[:4]]  # fmt: skip
    r = reproduction(result, shifted, MARKETS)
    assert (r.real_sold, r.matched, r.only_replay) == (4, 0, 8)


def test_replays_of_other_positions_cannot_be_compared() -> None:
    with pytest.raises(ValueError, match="different positions"):
        confidence(replay(many(2), FLAT), {"x": Replay((), None)})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (['session={"0": 0.01}'], "'session' is the session's own"),
        (['{"0": 0.01}', 'table-1={"0": 0.02}'], "each table needs its own label"),
        (['{"0": true}'], "markup must be a number"),
        (['{"zero": 0.01}'], "must be whole minutes"),
        (["{"], "table-1"),
    ],
)
def test_a_bad_tiers_option_is_refused_naming_the_table(values: list[str], message: str) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        parse_tables(values, allow_loss=False)
