"""Balance allocation: per base asset across pairs, oldest first, partials only above minimums."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mmops.domain.allocation import Allocation, allocate, funding_groups
from mmops.domain.models import Balance, Market, Position, Ticker
from mmops.domain.pricing import TakeProfitQuote, dust_reason, price_take_profit
from mmops.domain.rounding import is_multiple
from mmops.domain.tiers import DEFAULT_TIERS

D = Decimal
T0 = datetime(2025, 1, 1, 10, 0, tzinfo=UTC)


def market(symbol: str, lot: str = "0.00000001", min_amount: str = "0.00005") -> Market:
    base, quote = symbol.split("/")
    return Market(
        symbol, base, quote, D("0.1"), D(lot), D(min_amount), D("0.5"), D("0.0025"), D("0.004")
    )


MARKETS = {m.symbol: m for m in (market("BTC/USD"), market("BTC/EUR"), market("ETH/USD"))}


def tp(
    position_id: str, symbol: str, minutes: int, amount: str, price: str = "60000.0"
) -> TakeProfitQuote:
    """A priced take-profit opened ``minutes`` after 10:00."""
    p, a = D(price), D(amount)
    return TakeProfitQuote(
        session_id="S1", position_id=position_id, symbol=symbol,
        opened_at=T0 + timedelta(minutes=minutes), age_minutes=0, tier_minutes=0,
        markup=D(0), basis=p, break_even=p, target=p, crossed=False, price=p,
        uncovered=a, amount=a,
    )  # fmt: skip


def balances(**free: str) -> dict[str, Balance]:
    return {asset: Balance(asset, D(f), D(0), D(f)) for asset, f in free.items()}


def granted(allocation: Allocation) -> dict[str, Decimal]:
    return {g.quote.position_id: g.amount for g in allocation.granted}


def test_two_pairs_sharing_btc_with_not_enough_for_both_fund_the_oldest_first() -> None:
    quotes = [tp("USD-1", "BTC/USD", 5, "0.01"), tp("EUR-1", "BTC/EUR", 0, "0.01")]
    result = allocate(quotes, balances(BTC="0.015"), MARKETS)
    assert granted(result) == {"EUR-1": D("0.01"), "USD-1": D("0.005")}
    (short,) = result.insufficient
    assert (short.quote.position_id, short.granted, short.missing) == (
        "USD-1",
        D("0.005"),
        D("0.005"),
    )
    assert short.reason == "insufficient_balance"
    assert result.available == {"BTC": D("0.015")} and result.remaining == {"BTC": D(0)}


def test_demand_is_summed_across_pairs_not_checked_per_pair() -> None:
    quotes = [tp("A", "BTC/USD", 0, "0.01"), tp("B", "BTC/EUR", 1, "0.01")]
    result = allocate(quotes, balances(BTC="0.01"), MARKETS)
    assert granted(result) == {"A": D("0.01")}
    assert [s.quote.position_id for s in result.insufficient] == ["B"]


def test_the_reserve_is_kept_out_of_what_is_available() -> None:
    quotes = [tp("A", "BTC/USD", 0, "0.01")]
    result = allocate(quotes, balances(BTC="0.01"), MARKETS, {"BTC": D("0.004")})
    assert granted(result) == {"A": D("0.006")}
    assert result.available["BTC"] == D("0.006")


def test_a_reserve_larger_than_the_balance_leaves_nothing_not_a_negative() -> None:
    result = allocate([tp("A", "BTC/USD", 0, "0.01")], balances(BTC="0.01"), MARKETS, {"BTC": D(1)})
    assert granted(result) == {} and result.available["BTC"] == 0


def test_ties_on_opening_time_are_broken_by_position_id() -> None:
    quotes = [tp("P2", "BTC/USD", 0, "0.01"), tp("P1", "BTC/USD", 0, "0.01")]
    result = allocate(quotes, balances(BTC="0.01"), MARKETS)
    assert granted(result) == {"P1": D("0.01")}


def test_a_partial_below_the_minimum_amount_is_not_granted() -> None:
    result = allocate([tp("A", "BTC/USD", 0, "0.01")], balances(BTC="0.00004"), MARKETS)
    assert granted(result) == {}
    assert result.insufficient[0].missing == D("0.01")


def test_a_partial_below_the_minimum_cost_is_not_granted() -> None:
    cheap = {"BTC/USD": market("BTC/USD", min_amount="0")}
    result = allocate(
        [tp("A", "BTC/USD", 0, "0.01", price="10000.0")], balances(BTC="0.00004"), cheap
    )
    assert granted(result) == {}  # 0.00004 * 10000 = 0.4 < 0.5


def test_a_partial_is_rounded_down_to_the_lot() -> None:
    lots = {"ETH/USD": market("ETH/USD", lot="0.001", min_amount="0.01")}
    result = allocate([tp("A", "ETH/USD", 0, "1", "3000.0")], balances(ETH="0.5678"), lots)
    assert granted(result) == {"A": D("0.567")}


def test_a_younger_position_may_use_what_an_older_one_could_not() -> None:
    quotes = [tp("old", "BTC/USD", 0, "0.01"), tp("young", "BTC/USD", 9, "0.0001")]
    result = allocate(
        quotes, balances(BTC="0.0002"), {"BTC/USD": market("BTC/USD", min_amount="0.005")}
    )
    assert granted(result) == {"young": D("0.0001")}


def test_assets_are_funded_independently() -> None:
    quotes = [tp("B", "BTC/USD", 0, "0.01"), tp("E", "ETH/USD", 0, "1", "3000.0")]
    result = allocate(quotes, balances(ETH="1"), MARKETS)
    assert granted(result) == {"E": D(1)}
    assert [s.quote.position_id for s in result.insufficient] == ["B"]


def test_enough_balance_funds_everything() -> None:
    quotes = [tp("A", "BTC/USD", 0, "0.01"), tp("B", "BTC/EUR", 0, "0.01")]
    result = allocate(quotes, balances(BTC="1"), MARKETS)
    assert granted(result) == {"A": D("0.01"), "B": D("0.01")} and result.insufficient == ()
    assert not any(g.partial for g in result.granted)


def test_the_same_position_quoted_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="quoted twice"):
        allocate([tp("A", "BTC/USD", 0, "0.01")] * 2, balances(BTC="1"), MARKETS)


def test_a_quote_without_a_market_is_refused() -> None:
    with pytest.raises(ValueError, match="no market for BTC/GBP"):
        allocate([tp("A", "BTC/GBP", 0, "0.01")], balances(BTC="1"), MARKETS)


def test_a_negative_reserve_is_refused() -> None:
    with pytest.raises(ValueError, match="reserve of BTC"):
        allocate([tp("A", "BTC/USD", 0, "0.01")], balances(BTC="1"), MARKETS, {"BTC": D(-1)})


amounts = st.integers(min_value=1, max_value=2 * 10**6).map(lambda n: D(n).scaleb(-8))


@st.composite
def demands(draw: st.DrawFn) -> list[TakeProfitQuote]:
    """Take-profits priced by the real pricing, dust left out, as settlement would pass them."""
    quotes = []
    for i in range(draw(st.integers(min_value=0, max_value=12))):
        symbol = draw(st.sampled_from(sorted(MARKETS)))
        filled = draw(amounts)
        pos = Position(
            "S1", f"P{i}", symbol, T0 + timedelta(minutes=draw(st.integers(0, 30))),
            filled, filled * 60000, D(0),
        )  # fmt: skip
        ticker = Ticker(symbol, D("59990.0"), D("60000.1"), T0)
        result = price_take_profit(pos, 0, MARKETS[symbol], ticker, DEFAULT_TIERS)
        if isinstance(result, TakeProfitQuote):
            quotes.append(result)
    return quotes


@given(demands(), amounts, amounts, st.sampled_from(["0", "0.001"]))
def test_allocation_never_exceeds_available_nor_breaks_a_minimum(
    quotes: list[TakeProfitQuote], btc: Decimal, eth: Decimal, reserve: str
) -> None:
    free = {"BTC": Balance("BTC", btc, D(0), btc), "ETH": Balance("ETH", eth, D(0), eth)}
    result = allocate(quotes, free, MARKETS, {"BTC": D(reserve)})
    spent: defaultdict[str, Decimal] = defaultdict(Decimal)
    for grant in result.granted:
        mkt = MARKETS[grant.quote.symbol]
        spent[mkt.base] += grant.amount
        assert 0 < grant.amount <= grant.quote.amount
        assert is_multiple(grant.amount, mkt.lot)
        assert dust_reason(grant.amount, grant.quote.price, mkt) is None
    for asset, used in spent.items():
        assert used <= result.available[asset]
        assert result.remaining[asset] == result.available[asset] - used >= 0
    by_position = {g.quote.position_id: g.amount for g in result.granted}
    for short in result.insufficient:
        assert short.granted == by_position.get(short.quote.position_id, 0)
        assert short.granted + short.missing == short.quote.amount
    reported = set(by_position) | {s.quote.position_id for s in result.insufficient}
    assert reported == {q.position_id for q in quotes}


def test_funding_groups_keep_the_pairs_of_one_base_together_and_a_pair_without_market_alone() -> (
    None
):
    pairs = ["ETH/USD", "BTC/USD", "SOL/USD", "BTC/EUR", "ETH/USD"]
    assert funding_groups(pairs, MARKETS) == [
        ("ETH/USD",), ("BTC/USD", "BTC/EUR"), ("SOL/USD",),
    ]  # fmt: skip


@given(demands(), amounts, amounts, st.sampled_from(["0", "0.001"]))
def test_allocating_each_funding_group_apart_grants_what_allocating_all_at_once_does(
    quotes: list[TakeProfitQuote], btc: Decimal, eth: Decimal, reserve: str
) -> None:
    free = {"BTC": Balance("BTC", btc, D(0), btc), "ETH": Balance("ETH", eth, D(0), eth)}
    kept = {"BTC": D(reserve)}
    whole = allocate(quotes, free, MARKETS, kept)
    apart: list[Allocation] = []
    for group in funding_groups([q.symbol for q in quotes], MARKETS):
        mine = [q for q in quotes if q.symbol in group]
        apart.append(allocate(mine, free, MARKETS, kept))
    assert {g for a in apart for g in a.granted} == set(whole.granted)
    assert {s for a in apart for s in a.insufficient} == set(whole.insufficient)
