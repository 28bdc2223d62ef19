"""Reconciliation's rules, on in-memory fakes: mmops believes the exchange, not its notes."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

import pytest

from mmops.domain.exchange import ExchangeOrder
from mmops.domain.models import Order, OrderStatus, Side
from mmops.domain.records import TpStatus
from mmops.errors import ExchangeUnavailable, LockNotAcquired
from mmops.services.coverage import CoverageService
from mmops.services.reconcile import FETCH_BATCH, ReconcileAction, Reconciler
from mmops.services.settlement import SettlementService
from tests.unit.desk import BTC_EUR, BTC_USD, ETH_USD, T0, Desk, market


def reconciling(desk: Desk, *, dry_run: bool = False, group_pairs: int = 0) -> Reconciler:
    """The desk's settlement with a reconciler (as bootstrap wires it); the reconciler."""
    s = desk.store
    reconciler = Reconciler(s, s, s, s, desk.exchange, dry_run=dry_run, locks=desk.locks,
                            group_pairs=group_pairs)  # fmt: skip
    desk.settlement = SettlementService(
        registry=desk.registry, positions=s, records=desk.ops, runs=desk.runs,
        locks=desk.locks, exchange=desk.exchange, take_profits=desk.take_profits,
        stoploss=desk.stoploss, repricer=desk.repricer, clock=desk.clock, hours_back=24,
        session_limit=10, worker="w-test", reconciler=reconciler, group_pairs=group_pairs,
    )  # fmt: skip
    return reconciler


async def covered_desk(*pairs: str) -> tuple[Desk, Reconciler, str]:
    """A session whose position b1 (0.5 BTC) is covered by a resting take-profit."""
    desk = Desk()
    reconciler = reconciling(desk)
    await desk.start("s1", *(pairs or (BTC_USD,)))
    await desk.buy("b1", "0.5")
    [result] = await desk.settlement.run("s1")
    [placed] = result.pairs[BTC_USD].placed
    return desk, reconciler, placed.order_id


def sells(desk: Desk) -> list[str]:
    """The keys of the session's recorded sell fills."""
    fills = desk.store.fills.get(("s1", BTC_USD), {})
    return [key for key, f in fills.items() if f.side is Side.SELL]


async def tp_status(desk: Desk, order_id: str) -> TpStatus:
    record = await desk.store.tp_order("s1", order_id)
    assert record is not None
    return record.status


async def position_uncovered(desk: Desk) -> Decimal:
    [p] = (await desk.store.read_many("s1", ["b1"])).items
    return p.uncovered


async def test_a_take_profit_cancelled_on_the_venue_is_covered_again_within_one_run() -> None:
    desk, _, order_id = await covered_desk()
    desk.exchange.engine_cancel(order_id)

    [result] = await desk.settlement.run("s1")

    assert await tp_status(desk, order_id) is TpStatus.GONE
    [again] = result.pairs[BTC_USD].placed
    assert again.order_id != order_id and again.position_id == "b1"
    counts = result.to_dict()["pairs"][BTC_USD]["counts"]
    assert (counts["reconciled"], counts["released"], counts["placed"]) == (1, 1, 1)
    assert await position_uncovered(desk) == 0


async def test_a_split_session_covers_what_reconciliation_released_in_the_same_run() -> None:
    desk = Desk()
    reconciling(desk, group_pairs=1)  # BTC/USD and ETH/USD: two groups and the part ''
    await desk.start("s1", BTC_USD, ETH_USD)
    await desk.buy("b1", "0.5")
    first = await desk.settlement.run("s1")
    [placed] = first[0].pairs[BTC_USD].placed
    desk.exchange.engine_cancel(placed.order_id)

    groups_then_whole = await desk.settlement.run("s1")

    assert [r.part for r in groups_then_whole] == ["g0", "g1", ""]
    assert await tp_status(desk, placed.order_id) is TpStatus.GONE
    [again] = groups_then_whole[-1].pairs[BTC_USD].placed  # the part '' covered it
    assert again.position_id == "b1" and again.order_id != placed.order_id
    assert await position_uncovered(desk) == 0


async def test_mmops_reconcile_holds_every_lock_of_a_split_session() -> None:
    desk = Desk()
    reconciler = reconciling(desk, group_pairs=1)
    session = await desk.start("s1", BTC_USD, ETH_USD)

    async with desk.locks.hold("s1", "g1"):  # a group's run is going on
        with pytest.raises(LockNotAcquired):
            await reconciler.locked(session)
    assert (await reconciler.locked(session)).rows == ()


async def test_a_take_profit_filled_while_mmops_was_stopped_is_recorded_once_as_fills() -> None:
    desk, reconciler, order_id = await covered_desk()
    desk.exchange.fill(order_id)
    session = await desk.registry.get("s1")
    assert session is not None

    report = await reconciler.session(session)
    again = await reconciler.session(session)

    [row] = report.rows
    assert (row.action, row.exchange, row.filled) == (
        ReconcileAction.RECORDED_FILL, OrderStatus.FILLED, Decimal("0.5"))  # fmt: skip
    [trade] = desk.exchange.trades
    assert sells(desk) == [f"t:{trade.id}"]  # the trade id the fill feed records
    assert report.fills_recorded == 1
    assert await tp_status(desk, order_id) is TpStatus.FILLED
    assert await position_uncovered(desk) == 0  # it keeps covering what it sold
    assert again.rows == ()  # no longer believed open: nothing looked at twice


async def test_an_order_partly_filled_then_cancelled_records_its_fill_and_keeps_that_covered() -> (
    None
):
    desk, reconciler, order_id = await covered_desk()
    desk.exchange.fill(order_id, Decimal("0.2"))
    desk.exchange.engine_cancel(order_id)
    session = await desk.registry.get("s1")
    assert session is not None

    [row] = (await reconciler.session(session)).rows

    assert (row.action, row.filled) == (ReconcileAction.RELEASED, Decimal("0.2"))
    assert len(sells(desk)) == 1
    assert await position_uncovered(desk) == Decimal("0.3")


async def test_an_unknown_sell_on_the_account_is_reported_and_never_touched() -> None:
    desk, reconciler, _ = await covered_desk()
    stranger = ExchangeOrder("MANUAL-1", BTC_USD, Side.SELL, Decimal("150"), Decimal("0.1"),
                             OrderStatus.OPEN, T0, client_order_id="a-person")  # fmt: skip
    desk.exchange.orders[stranger.id] = stranger
    session = await desk.registry.get("s1")
    assert session is not None

    report = await reconciler.session(session)

    [unknown] = [r for r in report.rows if r.order_id == "MANUAL-1"]
    assert unknown.action is ReconcileAction.REPORTED_UNKNOWN and unknown.position_id is None
    assert desk.exchange.orders["MANUAL-1"] == stranger


async def test_a_recorded_order_of_the_session_is_not_unknown() -> None:
    desk, reconciler, _ = await covered_desk()
    ask = ExchangeOrder("ASK-1", BTC_USD, Side.SELL, Decimal("150"), Decimal("0.1"),
                        OrderStatus.OPEN, T0)  # fmt: skip
    desk.exchange.orders[ask.id] = ask
    await desk.store.save(Order("s1", "ASK-1", BTC_USD, Side.SELL, Decimal("150"),
                                Decimal("0.1"), T0))  # fmt: skip
    session = await desk.registry.get("s1")
    assert session is not None

    report = await reconciler.session(session)

    assert [r.action for r in report.rows] == [ReconcileAction.NONE]


async def test_a_take_profit_the_exchange_does_not_know_is_reported_absent_and_left_alone() -> None:
    desk, reconciler, order_id = await covered_desk()
    del desk.exchange.orders[order_id]
    session = await desk.registry.get("s1")
    assert session is not None

    [row] = (await reconciler.session(session)).rows

    assert (row.action, row.exchange) == (ReconcileAction.ABSENT, None)
    assert await tp_status(desk, order_id) is TpStatus.OPEN
    assert await position_uncovered(desk) == 0


async def test_a_failed_lookup_is_reported_and_changes_nothing() -> None:
    desk, reconciler, order_id = await covered_desk()
    desk.exchange.engine_cancel(order_id)

    async def down(order_ids: object) -> dict[str, ExchangeOrder]:
        raise ExchangeUnavailable("503")

    desk.exchange.fetch_orders = down  # type: ignore[method-assign]
    session = await desk.registry.get("s1")
    assert session is not None

    [row] = (await reconciler.session(session)).rows

    assert row.action is ReconcileAction.LOOKUP_FAILED
    assert await tp_status(desk, order_id) is TpStatus.OPEN


async def test_a_dry_run_reports_what_it_would_do_and_changes_nothing() -> None:
    desk, reconciler, order_id = await covered_desk()
    desk.exchange.engine_cancel(order_id)
    session = await desk.registry.get("s1")
    assert session is not None

    report = await reconciler.session(session, dry_run=True)

    assert report.dry_run and [r.action for r in report.rows] == [ReconcileAction.RELEASED]
    assert await tp_status(desk, order_id) is TpStatus.OPEN
    assert await position_uncovered(desk) == 0


async def test_take_profits_not_open_are_looked_up_in_batches_of_at_most_fifty() -> None:
    desk = Desk(balances={"BTC": "1000"})
    reconciler = reconciling(desk)
    await desk.start("s1", BTC_USD)
    for n in range(FETCH_BATCH + 5):
        await desk.buy(f"b{n:03d}", "0.01", minutes=n)
    await desk.settlement.run("s1")
    for order in list(desk.exchange.orders.values()):
        desk.exchange.engine_cancel(order.id)
    session = await desk.registry.get("s1")
    assert session is not None

    report = await reconciler.session(session)

    assert [len(ids) for ids in desk.exchange.fetched] == [FETCH_BATCH, 5]
    assert report.counts()["released"] == FETCH_BATCH + 5


async def test_the_report_is_sorted_by_session_pair_and_order_and_is_json() -> None:
    desk, reconciler, _ = await covered_desk(BTC_USD, BTC_EUR)
    await desk.buy("e1", "0.5", pair=BTC_EUR, price="90")
    await desk.settlement.run("s1")
    session = await desk.registry.get("s1")
    assert session is not None

    report = await reconciler.session(session)

    keys = [(r.session, r.pair, r.order_id) for r in report.rows]
    assert keys == sorted(keys) and len(keys) == 2
    decoded = json.loads(json.dumps(report.to_dict()))
    assert decoded["rows"][0]["action"] == "none"
    assert set(decoded["rows"][0]) >= {"session", "pair", "order_id", "client_order_id",
                                       "position_id", "believed", "exchange", "filled",
                                       "action"}  # fmt: skip


async def test_coverage_counts_only_take_profits_the_exchange_shows_open_or_filled() -> None:
    desk, reconciler, order_id = await covered_desk()
    session = await desk.registry.get("s1")
    assert session is not None
    markets = {BTC_USD: market(BTC_USD)}
    now = T0 + timedelta(minutes=5)
    believed = CoverageService(desk.store)
    measured = CoverageService(desk.store, reconciler)
    assert [c.percent for c in await measured.session(session, markets, now)] == [100]

    desk.exchange.engine_cancel(order_id)

    assert [c.percent for c in await believed.session(session, markets, now)] == [100]
    [c] = await measured.session(session, markets, now)
    assert (c.percent, c.uncovered_positions) == (0, 1)
    assert await tp_status(desk, order_id) is TpStatus.OPEN  # measuring changes nothing


async def test_a_filled_take_profit_still_counts_as_covering() -> None:
    desk, reconciler, order_id = await covered_desk()
    desk.exchange.fill(order_id)
    session = await desk.registry.get("s1")
    assert session is not None
    markets = {BTC_USD: market(BTC_USD)}

    [c] = await CoverageService(desk.store, reconciler).session(session, markets, T0)

    assert c.percent == 100


async def test_a_take_profit_the_exchange_does_not_know_is_reported_unconfirmed_in_coverage() -> (
    None
):
    desk, reconciler, order_id = await covered_desk()
    del desk.exchange.orders[order_id]
    session = await desk.registry.get("s1")
    assert session is not None

    [c] = await CoverageService(desk.store, reconciler).session(
        session, {BTC_USD: market(BTC_USD)}, T0
    )

    assert (c.percent, c.unconfirmed) == (100, Decimal("0.5"))
