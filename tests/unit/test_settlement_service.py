"""The settlement run's rules, on in-memory fakes: locks, run states, what is recorded, and
the stop-loss acted on once across runs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from decimal import Decimal

import pytest

from mmops.domain.models import Ticker
from mmops.domain.pnl import StopLossLevel
from mmops.domain.records import RunState
from mmops.errors import ExchangeUnavailable, StoreUnavailable, UnknownSession
from mmops.services import settlement as settlement_module
from mmops.services.settlement import SessionResult
from tests import fakes
from tests.unit.desk import BTC_EUR, BTC_USD, ETH_USD, T0, Desk


async def test_a_run_covers_the_session_and_records_its_status_and_a_run_row() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD, BTC_EUR)
    await desk.buy("b1", "0.5")
    await desk.buy("e1", "0.5", pair=BTC_EUR, price="90")

    [result] = await desk.settlement.run("s1")

    assert result.state is RunState.OK
    status = desk.ops.statuses["s1"]
    assert (status.state, status.placed, status.worker) == (RunState.OK, 2, "w-test")
    assert desk.ops.last_runs["s1"] == status.finished_at
    [row] = desk.runs.rows
    assert (row.session_id, row.state, row.placed) == ("s1", RunState.OK, 2)


async def test_a_session_held_by_another_worker_is_locked_and_nothing_is_recorded() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    await desk.buy("b1", "0.5")

    async with desk.locks.hold("s1"):
        [result] = await desk.settlement.run("s1")

    assert result.state is RunState.LOCKED and result.ok
    assert desk.exchange.batches == []
    assert (desk.ops.statuses, desk.runs.rows) == ({}, [])


async def test_a_position_short_of_balance_makes_the_run_partial() -> None:
    desk = Desk(balances={"BTC": "0.5"})
    await desk.start("s1", BTC_USD)
    await desk.buy("b1", "0.5")
    await desk.buy("b2", "0.5", minutes=1)

    [result] = await desk.settlement.run("s1")

    assert result.state is RunState.PARTIAL
    assert desk.ops.statuses["s1"].skipped == 1


async def test_a_pair_that_fails_whole_fails_the_session_when_it_is_the_only_one() -> None:
    desk = Desk()
    await desk.start("s1", "XRP/USD")
    [result] = await desk.settlement.run("s1")

    assert result.state is RunState.FAILED


async def test_sessions_in_one_run_do_not_spend_the_same_balance() -> None:
    desk = Desk(balances={"BTC": "0.5"})
    await desk.start("s1", BTC_USD)
    await desk.start("s2", BTC_EUR)
    await desk.buy("b1", "0.5", sid="s1")
    await desk.buy("e1", "0.5", pair=BTC_EUR, price="90", sid="s2")

    results = {r.session_id: r for r in await desk.settlement.run()}

    assert results["s1"].totals()["placed"] + results["s2"].totals()["placed"] == 1
    assert len(desk.exchange.orders) == 1


async def test_the_stop_loss_level_is_recorded_and_alerted_once_across_runs() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD, capital="1000")
    await desk.buy("b1", "10", price="100")
    desk.set_bid(BTC_USD, "94")  # 6% down: warn

    await desk.settlement.run("s1")
    await desk.settlement.run("s1")

    stoploss = desk.ops.statuses["s1"].stoploss
    assert stoploss is not None and stoploss.level is StopLossLevel.WARN
    assert len(desk.notifier.sent) == 1
    assert [r.details["stoploss"]["action"] for r in desk.runs.rows] == ["warn", None]


async def test_a_flattened_session_gets_no_new_take_profits_and_new_positions_are_exited() -> None:
    desk = Desk(balances={"BTC": "20"})
    await desk.start("s1", BTC_USD, capital="1000")
    await desk.buy("b1", "10", price="100")
    desk.set_bid(BTC_USD, "84")
    await desk.settlement.run("s1")  # flattens: b1 is exited
    await desk.buy("b2", "1", price="84", minutes=1)

    [result] = await desk.settlement.run("s1")

    assert result.totals().get("placed", 0) == 0
    b2 = await desk.position("b2")
    assert (b2.take_profits, b2.closed) == ((), Decimal("1"))


async def test_an_unknown_session_is_refused() -> None:
    desk = Desk()

    with pytest.raises(UnknownSession):
        await desk.settlement.run("nope")


async def test_a_big_session_is_settled_in_groups_sharing_no_base_then_as_a_whole() -> None:
    desk = Desk(group_pairs=1)  # BTC/USD and BTC/EUR sell one BTC: one group; ETH/USD another
    await desk.start("s1", BTC_USD, BTC_EUR, ETH_USD, capital="1000")
    await desk.buy("b1", "0.5")
    await desk.buy("e1", "0.5", pair=BTC_EUR, price="90")
    await desk.buy("h1", "1", pair=ETH_USD, price="10")

    results = await desk.settlement.run("s1")

    assert [(r.part, sorted(r.pairs), r.state) for r in results] == [
        ("g0", [BTC_EUR, BTC_USD], RunState.OK),
        ("g1", [ETH_USD], RunState.OK),
        ("", [BTC_EUR, BTC_USD, ETH_USD], RunState.OK),  # reconciled, stop-loss checked
    ]
    assert [r.totals().get("placed", 0) for r in results] == [2, 1, 0]
    assert results[2].stoploss is not None
    assert len(desk.exchange.orders) == 3
    assert [row.details.get("part", "") for row in desk.runs.rows] == ["g0", "g1", ""]
    assert desk.ops.statuses["s1"].stoploss is not None  # the status: the whole part's


async def test_a_held_group_skips_that_group_and_the_whole_part_only() -> None:
    desk = Desk(group_pairs=1)
    await desk.start("s1", BTC_USD, ETH_USD)
    await desk.buy("b1", "0.5")
    await desk.buy("h1", "1", pair=ETH_USD, price="10")

    async with desk.locks.hold("s1", "g1"):  # another worker settles the ETH group
        results = await desk.settlement.run("s1")

    assert [(r.part, r.state) for r in results] == [
        ("g0", RunState.OK), ("g1", RunState.LOCKED), ("", RunState.LOCKED),
    ]  # fmt: skip
    assert [o.symbol for o in desk.exchange.orders.values()] == [BTC_USD]
    assert "s1" not in desk.ops.statuses


async def test_a_quick_run_of_a_big_session_takes_only_the_groups_of_its_pairs() -> None:
    desk = Desk(group_pairs=1)
    await desk.start("s1", BTC_USD, ETH_USD)
    await desk.buy("b1", "0.5")
    await desk.buy("h1", "1", pair=ETH_USD, price="10")

    async with desk.locks.hold("s1", "g0"):  # the BTC group is busy: the ETH one goes on
        results = await desk.settlement.run("s1", [ETH_USD])

    assert [(r.part, sorted(r.pairs), r.state) for r in results] == [("g1", [ETH_USD], RunState.OK)]
    assert [o.symbol for o in desk.exchange.orders.values()] == [ETH_USD]
    assert "s1" not in desk.ops.statuses  # a narrowed run writes no status


async def test_groups_settled_together_all_end_before_an_error_is_raised() -> None:
    """One group's run failing (a store down) must not leave another running on its own, still
    placing orders, while the caller gives up its leases."""
    finished: list[str] = []

    async def fails() -> SessionResult:
        raise StoreUnavailable("Redis", "connection refused")

    async def slow() -> SessionResult:
        await asyncio.sleep(0.05)
        finished.append("slow")
        return SessionResult("s1", RunState.OK, T0, T0, part="g1")

    with pytest.raises(StoreUnavailable):
        await settlement_module._all([fails(), slow()])
    assert finished == ["slow"]


class NoTickersVenue(fakes.MemoryExchange):
    async def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]:
        raise ExchangeUnavailable("tickers: 503")


async def test_without_market_data_every_part_is_recorded_failed_and_nothing_is_sent() -> None:
    """The first parts take their locks and read while the market data is on its way; when it
    cannot be fetched, they and every later part are recorded failed with the reason."""
    desk = Desk(group_pairs=1, venue=NoTickersVenue)
    await desk.start("s1", BTC_USD, ETH_USD)
    await desk.buy("b1", "0.5")
    await desk.buy("h1", "1", pair=ETH_USD, price="10")

    results = await desk.settlement.run("s1")

    assert [(r.part, r.state) for r in results] == [
        ("g0", RunState.FAILED), ("g1", RunState.FAILED), ("", RunState.FAILED),
    ]  # fmt: skip
    assert {r.error for r in results} == {"market data: tickers: 503"}
    assert [row.details.get("part", "") for row in desk.runs.rows] == ["g0", "g1", ""]
    assert "s1" not in desk.ops.statuses  # part '' never took its locks: no status written
    assert desk.exchange.batches == []
    assert (await desk.position("b1")).pending == ()
