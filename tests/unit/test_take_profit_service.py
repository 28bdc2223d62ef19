"""The take-profit service's rules, on in-memory fakes: allocation across pairs, skip reasons,
recovery of placements whose outcome was lost."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.domain.allocation import ReservationRequest
from mmops.domain.exchange import OrderRequest, PlacementResult
from mmops.domain.models import OrderStatus, PairStatus, Side
from mmops.domain.records import Coverage, TpStatus
from mmops.domain.tiers import TierPolicy
from mmops.errors import ExchangeRejected, LockLost, PostOnlyWouldTake, StoreUnavailable
from mmops.services.take_profit import TakeProfitService
from mmops.services.tp_results import MarketData, PairReport, SkipReason
from tests import fakes
from tests.unit.desk import BTC_EUR, BTC_USD, ETH_USD, Desk, cid


def skips(report: PairReport) -> dict[str, SkipReason]:
    return {s.position_id: s.reason for s in report.skipped}


def placed(report: PairReport) -> dict[str, Decimal]:
    return {p.position_id: p.amount for p in report.placed}


async def test_pairs_sharing_a_base_asset_are_funded_oldest_first_and_the_rest_is_short() -> None:
    desk = Desk(balances={"BTC": "1.0", "ETH": "10"})
    await desk.buy("eur-old", "0.5", pair=BTC_EUR, price="90", minutes=0)
    await desk.buy("usd-mid", "0.5", pair=BTC_USD, minutes=5)
    await desk.buy("usd-new", "0.5", pair=BTC_USD, minutes=10)
    await desk.buy("eth", "3", pair=ETH_USD, price="10", minutes=20)
    desk.at(30)
    positions = {**await desk.uncovered(BTC_USD), **await desk.uncovered(BTC_EUR)}
    positions |= await desk.uncovered(ETH_USD)

    reports = await desk.take_profits.create_batch("s1", positions, await desk.data())

    assert placed(reports[BTC_EUR]) == {"eur-old": Decimal("0.5")}
    assert placed(reports[BTC_USD]) == {"usd-mid": Decimal("0.5")}
    assert skips(reports[BTC_USD]) == {"usd-new": SkipReason.INSUFFICIENT_BALANCE}
    assert placed(reports[ETH_USD]) == {"eth": Decimal("3")}  # another base: its own balance
    assert [p.position_id for p in (await desk.uncovered(BTC_USD))[BTC_USD]] == ["usd-new"]


async def test_a_partial_grant_places_what_the_balance_holds_and_reports_the_rest() -> None:
    desk = Desk(balances={"BTC": "0.7"})
    await desk.buy("old", "0.5", minutes=0)
    await desk.buy("new", "0.5", minutes=1)
    desk.at(5)

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert placed(report) == {"old": Decimal("0.5"), "new": Decimal("0.2")}
    assert skips(report) == {"new": SkipReason.INSUFFICIENT_BALANCE}
    assert (await desk.position("new")).uncovered == Decimal("0.3")


async def test_a_remainder_below_the_market_minimum_is_dust_and_never_sent() -> None:
    desk = Desk()
    await desk.buy("tiny", "0.0005")  # min_amount is 0.001

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert skips(report) == {"tiny": SkipReason.DUST}
    assert report.skipped[0].detail == "min_amount"
    assert desk.exchange.batches == []
    assert report.ok  # dust is not a failure of the run


@pytest.mark.parametrize("status", [PairStatus.CANCEL_ONLY, PairStatus.REDUCE_ONLY])
async def test_a_pair_that_admits_no_new_sell_is_skipped_with_its_mode(status: PairStatus) -> None:
    desk = Desk()
    await desk.buy("p1", "0.5")
    desk.exchange.markets_by_symbol[BTC_USD] = replace(
        desk.exchange.markets_by_symbol[BTC_USD], status=status
    )

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert skips(report) == {"p1": SkipReason.PAIR_RESTRICTED}
    assert report.skipped[0].detail == status.value
    assert desk.exchange.batches == []


@pytest.mark.parametrize("status", [PairStatus.POST_ONLY, PairStatus.LIMIT_ONLY])
async def test_a_post_only_or_limit_only_pair_gets_its_take_profits(status: PairStatus) -> None:
    desk = Desk()
    await desk.buy("p1", "0.5")
    desk.exchange.markets_by_symbol[BTC_USD] = replace(
        desk.exchange.markets_by_symbol[BTC_USD], status=status
    )

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert placed(report) == {"p1": Decimal("0.5")}


async def test_a_pair_without_market_data_fails_alone_and_the_others_are_covered() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    await desk.buy("x1", "1", pair="XRP/USD", price="1")
    positions = await desk.uncovered(BTC_USD) | await desk.uncovered("XRP/USD")

    reports = await desk.take_profits.create_batch("s1", positions, await desk.data())

    assert reports["XRP/USD"].error == "no market or ticker for XRP/USD"
    assert reports["XRP/USD"].placed == []
    assert placed(reports[BTC_USD]) == {"b1": Decimal("0.5")}


async def test_a_position_claimed_by_another_worker_is_skipped_and_not_placed() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    await desk.buy("b2", "0.5", minutes=1)
    await desk.claims.acquire("s1", ["b1"])  # another worker is placing it

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert skips(report) == {"b1": SkipReason.ATTEMPT_IN_PROGRESS}
    assert placed(report) == {"b2": Decimal("0.5")}
    assert report.ok  # another worker's hold is not this run's failure


async def test_a_position_covered_since_it_was_read_is_not_covered_twice() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    stale = await desk.uncovered()
    await desk.take_profits.create_batch("s1", stale, await desk.data())

    [report] = (await desk.take_profits.create_batch("s1", stale, await desk.data())).values()

    assert skips(report) == {"b1": SkipReason.ALREADY_COVERED}
    assert len(desk.exchange.orders) == 1


async def test_the_take_profit_is_recorded_with_its_tier_and_the_position_leaves_the_index() -> (
    None
):
    desk = Desk()
    await desk.buy("b1", "0.5", minutes=0)
    desk.at(61)

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    [p] = report.placed
    record = await desk.store.tp_order("s1", p.order_id)
    assert record is not None
    assert (record.tier, record.status, record.client_order_id) == (60, TpStatus.OPEN, cid("b1"))
    assert (await desk.uncovered())[BTC_USD] == []


async def test_a_refused_take_profit_is_failed_and_its_pending_marker_cleared() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    desk.exchange.refuse[cid("b1")] = PostOnlyWouldTake("EOrder:Post only order")

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert [(f.position_id, f.kind) for f in report.failed] == [("b1", "PostOnlyWouldTake")]
    p = await desk.position("b1")
    assert (p.pending, p.uncovered) == ((), Decimal("0.5"))
    assert not report.ok


async def test_a_placement_whose_answer_was_lost_is_found_by_lookup_and_recorded_once() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    desk.exchange.lose_answer.add(cid("b1"))

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert placed(report) == {"b1": Decimal("0.5")}
    assert len(desk.exchange.orders) == 1
    p = await desk.position("b1")
    assert (p.pending, p.uncovered) == ((), Decimal(0))


async def test_a_pending_marker_whose_order_is_live_is_recorded_not_placed_again() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    [order] = [r.order for r in await desk.exchange.place_batch([_sell(cid("b1"))]) if r.order]
    await desk.mark_pending("b1", "0.5")

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert report.recovered == 1
    assert report.placed == []
    assert (await desk.position("b1")).take_profits == ((order.id, Decimal("0.5")),)
    record = await desk.store.tp_order("s1", order.id)
    assert record is not None and record.tier is None  # recovered: its tier is unknown


async def test_a_pending_marker_whose_order_never_landed_is_cleared_and_placed_anew() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    await desk.mark_pending("b1", "0.5")

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert placed(report) == {"b1": Decimal("0.5")}
    [order] = desk.exchange.orders.values()
    # A new client id: the one fenced before may never be sent for another order.
    assert (order.client_order_id, order.status) == (cid("b1", 1), OrderStatus.OPEN)


async def test_a_marker_before_its_deadline_is_in_flight_left_alone_and_not_looked_up() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    deadline = desk.clock.now() + timedelta(seconds=15)
    await desk.mark_pending("b1", "0.5", deadline)
    desk.clock.advance(timedelta(seconds=16))  # past the deadline, within the clock skew

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert [(s.position_id, s.reason) for s in report.skipped] == [("b1", SkipReason.IN_FLIGHT)]
    assert desk.exchange.batches == [] and desk.exchange.lookups == []
    assert (await desk.position("b1")).pending != ()


async def test_after_its_deadline_and_the_skew_a_marker_is_looked_up_then_placed_anew() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    await desk.mark_pending("b1", "0.5", desk.clock.now() + timedelta(seconds=15))
    desk.clock.advance(timedelta(seconds=18))  # deadline 15 s + skew 2 s have passed

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert desk.exchange.lookups == [cid("b1", 0)]
    assert placed(report) == {"b1": Decimal("0.5")}
    [order] = desk.exchange.orders.values()
    assert order.client_order_id == cid("b1", 1)


async def test_every_order_carries_its_deadline_and_a_refusal_spends_its_client_id() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    desk.exchange.refuse[cid("b1", 0)] = ExchangeRejected("EOrder:Invalid price")

    await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    [[first]] = desk.exchange.batches
    assert first.deadline == desk.clock.now() + timedelta(seconds=15)
    await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())

    assert [r.client_order_id for [r] in desk.exchange.batches] == [cid("b1", 0), cid("b1", 1)]


class SlowCounterVenue(fakes.MemoryExchange):
    """A venue whose trading counter holds every batch back 10 s (the clock moves by it)."""

    def __init__(self, clock: SimulatedClock, *args: Any) -> None:
        super().__init__(clock, *args)
        self.clock = clock
        self.admitted: list[tuple[str, int, datetime]] = []  # pair, orders, when admitted

    async def admit(self, symbol: str, orders: int) -> None:
        self.admitted.append((symbol, orders, self.clock.advance(timedelta(seconds=10))))


async def test_a_batch_waits_for_the_counter_before_its_fence_and_its_deadline_after() -> None:
    desk = Desk(venue=SlowCounterVenue)
    for i in range(20):
        await desk.buy(f"b{i:02}", "0.1")

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    venue = desk.exchange
    assert isinstance(venue, SlowCounterVenue)
    assert [(s, n) for s, n, _ in venue.admitted] == [(BTC_USD, 15), (BTC_USD, 5)]
    for (_, _, admitted_at), batch in zip(venue.admitted, venue.batches, strict=True):
        assert {r.deadline for r in batch} == {admitted_at + timedelta(seconds=15)}
    assert len(report.placed) == 20 and report.failed == []


async def test_a_lost_lock_stops_sending_before_the_next_batch() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    async with desk.locks.hold("s1") as lease:
        desk.locks.take_away("s1")  # the TTL lapsed in a pause, another worker holds it now
        with pytest.raises(LockLost):
            await desk.take_profits.create_batch(
                "s1", await desk.uncovered(), await desk.data(), lease=lease
            )
    assert desk.exchange.batches == []
    assert (await desk.position("b1")).pending == ()


class LockTakenAfterFirstBatch(fakes.MemoryExchange):
    """Another worker takes the session's lock while the first batch is on its way."""

    locks: fakes.FakeLocks

    async def place_batch(self, orders: Sequence[OrderRequest]) -> list[PlacementResult]:
        results = await super().place_batch(orders)
        if len(self.batches) == 1:
            self.locks.take_away("s1")
        return results


async def test_a_lock_lost_between_batches_sends_no_more_and_records_what_was_sent() -> None:
    """A batch's take-profits are recorded while the next batch is fenced: when that fence
    finds the lock lost, what was sent is still recorded before the run gives up."""
    desk = Desk(venue=LockTakenAfterFirstBatch)
    venue = desk.exchange
    assert isinstance(venue, LockTakenAfterFirstBatch)
    venue.locks = desk.locks
    record = desk.store.record_coverage

    async def slow_record(coverages: Sequence[Coverage]) -> None:
        await asyncio.sleep(0.01)  # still recording when the next fence fails
        await record(coverages)

    desk.store.record_coverage = slow_record  # type: ignore[method-assign]
    for i in range(20):
        await desk.buy(f"b{i:02}", "0.1")

    async with desk.locks.hold("s1") as lease:
        with pytest.raises(LockLost):
            await desk.take_profits.create_batch(
                "s1", await desk.uncovered(), await desk.data(), lease=lease
            )

    [first] = venue.batches
    sent = {r.client_order_id for r in first}
    assert len(sent) == 15
    positions = [await desk.position(f"b{i:02}") for i in range(20)]
    recorded = [p for p in positions if p.take_profits]
    covering = [venue.orders[order_id] for p in recorded for order_id, _ in p.take_profits]
    assert {o.client_order_id for o in covering} == sent
    assert all(p.pending == () and p.uncovered == 0 for p in recorded)
    assert [p for p in positions if not p.take_profits and not p.pending] == positions[15:]


async def test_a_batch_that_fails_to_record_stops_the_pair_after_the_batch_on_its_way() -> None:
    """Batch 1's recording fails while batch 2 is sent: batch 2 is still recorded, batch 3 is
    never sent, and the store's error ends the run; batch 1's markers stand for its orders."""
    desk = Desk()
    record = desk.store.record_coverage
    calls: list[int] = []

    async def failing_once(coverages: Sequence[Coverage]) -> None:
        calls.append(len(coverages))
        if len(calls) == 1:
            raise StoreUnavailable("Redis", "connection reset")
        await record(coverages)

    desk.store.record_coverage = failing_once  # type: ignore[method-assign]
    for i in range(45):
        await desk.buy(f"b{i:02}", "0.1")

    with pytest.raises(StoreUnavailable):
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())

    assert [len(b) for b in desk.exchange.batches] == [15, 15]
    assert calls == [15, 15]
    positions = [await desk.position(f"b{i:02}") for i in range(45)]
    assert all(p.pending and not p.take_profits for p in positions[:15])
    assert all(p.take_profits and not p.pending for p in positions[15:30])
    assert all(not p.take_profits and not p.pending for p in positions[30:])


async def test_a_cancelled_pair_still_finishes_recording_the_batch_it_sent() -> None:
    desk = Desk()
    record = desk.store.record_coverage

    async def slow_record(coverages: Sequence[Coverage]) -> None:
        await asyncio.sleep(0.05)
        await record(coverages)

    desk.store.record_coverage = slow_record  # type: ignore[method-assign]
    for i in range(20):
        await desk.buy(f"b{i:02}", "0.1")
    placing = asyncio.ensure_future(
        desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    )
    while len(desk.exchange.batches) < 2:
        await asyncio.sleep(0.001)
    placing.cancel()  # batch 1 is recording, batch 2 was just sent

    with pytest.raises(asyncio.CancelledError):
        await placing

    positions = [await desk.position(f"b{i:02}") for i in range(20)]
    assert all(p.take_profits and not p.pending for p in positions[:15])


async def test_dry_run_prices_and_allocates_but_sends_and_records_nothing() -> None:
    desk = Desk(dry_run=True)
    await desk.buy("b1", "0.5")

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert [(p.position_id, p.dry_run) for p in report.placed] == [("b1", True)]
    assert desk.exchange.batches == []
    assert (await desk.position("b1")).uncovered == Decimal("0.5")


def _sell(client_id: str) -> OrderRequest:
    return OrderRequest(BTC_USD, Side.SELL, Decimal("0.5"), Decimal("101.5"), client_id)


async def test_an_order_cancelled_after_selling_part_keeps_that_part_covered() -> None:
    desk = Desk()
    await desk.buy("b1", "0.5")
    [order] = [r.order for r in await desk.exchange.place_batch([_sell(cid("b1"))]) if r.order]
    await desk.mark_pending("b1", "0.5")
    desk.exchange.orders[order.id] = replace(
        order, status=OrderStatus.CANCELED, filled=Decimal("0.2")
    )

    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()

    assert report.recovered == 1
    assert placed(report) == {"b1": Decimal("0.3")}  # only what was not sold: never 0.5 again
    p = await desk.position("b1")
    assert p.covered == Decimal("0.5") and p.uncovered == 0


# -- one account, many workers: balance reservations ---------------------------------------


def worker(desk: Desk, ledger: fakes.FakeReservations | None) -> TakeProfitService:
    """Another worker on the desk's account: its own service, the same stores and venue."""
    return TakeProfitService(
        positions=desk.store,
        attempts=desk.claims,
        exchange=desk.exchange,
        tiers=TierPolicy(),
        clock=desk.clock,
        reservations=ledger,
        account=desk.exchange.account,
        reservation_ttl=timedelta(minutes=5),
    )


async def snapshot(desk: Desk) -> MarketData:
    return replace(await desk.data(), fetched_at=desk.clock.now())


def placed_total(*reports: dict[str, PairReport]) -> Decimal:
    return sum((p.amount for r in reports for rep in r.values() for p in rep.placed), Decimal(0))


async def two_sessions_wanting(desk: Desk, qty: str) -> None:
    await desk.buy("a1", qty, sid="s1")
    await desk.buy("b1", qty, sid="s2")
    desk.at(5)


async def test_two_workers_with_one_snapshot_never_spend_the_same_balance() -> None:
    desk = Desk(balances={"BTC": "1.0"})
    await two_sessions_wanting(desk, "0.8")
    ledger = fakes.FakeReservations()
    data = await snapshot(desk)  # both workers fetched before either placed

    first = await worker(desk, ledger).create_batch("s1", await desk.uncovered(), data)
    second = await worker(desk, ledger).create_batch("s2", await desk.uncovered(sid="s2"), data)

    assert placed(first[BTC_USD]) == {"a1": Decimal("0.8")}
    assert placed(second[BTC_USD]) == {"b1": Decimal("0.2")}  # what the first left
    assert skips(second[BTC_USD]) == {"b1": SkipReason.INSUFFICIENT_BALANCE}
    assert second[BTC_USD].failed == []  # the venue refused nothing
    assert placed_total(first, second) == Decimal("1.0")


async def test_without_a_ledger_the_same_race_over_allocates() -> None:
    """The rule above needs the ledger: two workers on one snapshot both spend 0.8 of 1.0."""
    desk = Desk(balances={"BTC": "1.0"})
    await two_sessions_wanting(desk, "0.8")
    data = await snapshot(desk)

    await worker(desk, None).create_batch("s1", await desk.uncovered(), data)
    second = await worker(desk, None).create_batch("s2", await desk.uncovered(sid="s2"), data)

    assert [f.position_id for f in second[BTC_USD].failed] == ["b1"]  # refused by the venue


async def test_concurrent_workers_together_place_at_most_the_free_balance() -> None:
    desk = Desk(balances={"BTC": "1.0"})
    await two_sessions_wanting(desk, "0.6")
    ledger = fakes.FakeReservations()
    data = await snapshot(desk)
    a, b = worker(desk, ledger), worker(desk, ledger)

    reports = await asyncio.gather(
        a.create_batch("s1", await desk.uncovered(), data),
        b.create_batch("s2", await desk.uncovered(sid="s2"), data),
    )

    assert placed_total(*reports) == Decimal("1.0")
    assert all(r[BTC_USD].failed == [] for r in reports)


async def test_a_dead_workers_pending_reservation_holds_the_balance_until_its_ttl() -> None:
    desk = Desk(balances={"BTC": "1.0"})
    await desk.buy("a1", "0.8")
    desk.at(5)
    ledger = fakes.FakeReservations()
    request = ReservationRequest(desk.exchange.account, "BTC", "dead", Decimal("0.5"),
                                 Decimal("1.0"), desk.clock.now(), desk.clock.now(),
                                 timedelta(minutes=5), "another")  # fmt: skip
    assert (await ledger.reserve(request)).granted

    early = await worker(desk, ledger).create_batch(
        "s1", await desk.uncovered(), await snapshot(desk)
    )
    desk.at(11)  # past the dead worker's TTL
    late = await worker(desk, ledger).create_batch(
        "s1", await desk.uncovered(), await snapshot(desk)
    )

    assert placed(early[BTC_USD]) == {"a1": Decimal("0.5")}
    assert placed(late[BTC_USD]) == {"a1": Decimal("0.3")}  # the rest, once it expired


async def test_a_refused_batch_releases_its_reservation() -> None:
    desk = Desk(balances={"BTC": "1.0"})
    await two_sessions_wanting(desk, "0.8")
    desk.exchange.refuse[cid("a1")] = ExchangeRejected("EOrder:Unknown")
    ledger = fakes.FakeReservations()
    data = await snapshot(desk)

    first = await worker(desk, ledger).create_batch("s1", await desk.uncovered(), data)
    second = await worker(desk, ledger).create_batch("s2", await desk.uncovered(sid="s2"), data)

    assert [f.position_id for f in first[BTC_USD].failed] == ["a1"]
    assert placed(second[BTC_USD]) == {"b1": Decimal("0.8")}
    assert ledger.live(desk.exchange.account, desk.clock.now())[0].placed is not None


async def test_a_snapshot_taken_after_a_placement_does_not_count_it_twice() -> None:
    desk = Desk(balances={"BTC": "1.0"})
    await two_sessions_wanting(desk, "0.4")
    ledger = fakes.FakeReservations()

    await worker(desk, ledger).create_batch("s1", await desk.uncovered(), await snapshot(desk))
    desk.clock.advance(timedelta(seconds=1))
    fresh = await snapshot(desk)  # the venue now holds 0.4 for the first order
    second = await worker(desk, ledger).create_batch("s2", await desk.uncovered(sid="s2"), fresh)

    assert fresh.balances["BTC"].free == Decimal("0.6")
    assert placed(second[BTC_USD]) == {"b1": Decimal("0.4")}


async def test_a_workers_own_placements_are_already_out_of_its_adjusted_snapshot() -> None:
    """Settlement takes what a worker placed out of its snapshot for its next session; the
    ledger does not take it out a second time."""
    desk = Desk(balances={"BTC": "1.0"})
    await two_sessions_wanting(desk, "0.5")
    ledger = fakes.FakeReservations()
    me = worker(desk, ledger)
    data = await snapshot(desk)

    await me.create_batch("s1", await desk.uncovered(), data)
    btc = data.balances["BTC"]
    after = replace(data, balances={"BTC": replace(btc, free=btc.free - Decimal("0.5"))})
    second = await me.create_batch("s2", await desk.uncovered(sid="s2"), after)

    assert placed(second[BTC_USD]) == {"b1": Decimal("0.5")}


async def test_a_dry_run_reserves_nothing() -> None:
    desk = Desk(balances={"BTC": "1.0"})
    await desk.buy("a1", "0.8")
    ledger = fakes.FakeReservations()
    service = worker(desk, ledger)
    service.dry_run = True

    await service.create_batch("s1", await desk.uncovered(), await snapshot(desk))

    assert ledger.ledgers == {}
