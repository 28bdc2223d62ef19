"""Repricing decisions, on in-memory fakes: a take-profit whose position has aged into a lower
tier is cancelled and its position uncovered; every other take-profit is left alone."""

from __future__ import annotations

from decimal import Decimal

from mmops.domain.models import OrderStatus
from mmops.domain.records import TpStatus
from mmops.services.tp_results import PairReport
from tests.unit.desk import BTC_USD, Desk


async def covered_at(minutes: int) -> tuple[Desk, str]:
    """A desk with position b1 (bought at T0) covered by a take-profit placed ``minutes`` in."""
    desk = Desk()
    await desk.buy("b1", "0.5")
    desk.at(minutes)
    [report] = (
        await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data())
    ).values()
    [placed] = report.placed
    return desk, placed.order_id


async def reprice(desk: Desk) -> tuple[PairReport, set[str]]:
    report = PairReport(BTC_USD)
    released = await desk.repricer.run((await desk.store.all("s1", BTC_USD)).items, report)
    return report, released


async def test_a_take_profit_aged_into_a_lower_tier_is_cancelled_and_its_position_uncovered() -> (
    None
):
    desk, order_id = await covered_at(5)  # tier 0
    desk.at(61)  # the position is in the 60-minute tier now

    report, released = await reprice(desk)

    assert released == {"b1"}
    assert (report.repriced, report.released) == (1, Decimal("0.5"))
    assert desk.exchange.orders[order_id].status is OrderStatus.CANCELED
    record = await desk.store.tp_order("s1", order_id)
    assert record is not None and record.status is TpStatus.REPLACED
    assert (await desk.position("b1")).uncovered == Decimal("0.5")
    assert [p.position_id for p in (await desk.uncovered())[BTC_USD]] == ["b1"]


async def test_a_take_profit_still_in_its_tier_is_left_alone() -> None:
    desk, order_id = await covered_at(5)
    desk.at(59)

    report, released = await reprice(desk)

    assert (released, report.repriced) == (set(), 0)
    assert desk.exchange.orders[order_id].status is OrderStatus.OPEN
    assert (await desk.position("b1")).uncovered == 0


async def test_a_take_profit_priced_at_the_current_tier_is_not_repriced_again() -> None:
    desk, order_id = await covered_at(61)  # priced at the 60-minute tier
    desk.at(239)

    report, _ = await reprice(desk)

    assert report.repriced == 0
    assert desk.exchange.orders[order_id].status is OrderStatus.OPEN


async def test_a_take_profit_filled_before_its_cancel_is_marked_filled_and_keeps_covering() -> None:
    desk, order_id = await covered_at(5)
    desk.exchange.fill(order_id)
    desk.at(61)

    report, released = await reprice(desk)

    assert (released, report.repriced) == (set(), 0)
    record = await desk.store.tp_order("s1", order_id)
    assert record is not None and record.status is TpStatus.FILLED
    assert (await desk.position("b1")).uncovered == 0


async def test_a_take_profit_no_longer_open_is_never_repriced() -> None:
    desk, order_id = await covered_at(5)
    await desk.store.set_tp_status("s1", order_id, TpStatus.FILLED)
    desk.at(61)

    report, _ = await reprice(desk)

    assert report.repriced == 0
    assert desk.exchange.orders[order_id].status is OrderStatus.OPEN
