"""Stop-loss levels, on in-memory fakes: warn, halt and flatten at drawdown thresholds (5%,
10%, 15% from the peak), each acted on and alerted once."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from mmops.domain.models import Fill, OrderKind, OrderStatus, Session, SessionStatus, Side
from mmops.domain.pnl import StopLossLevel
from mmops.domain.records import RunState, SettlementStatus, StopLossFigures, TpStatus
from mmops.services.stoploss import StopLossReport
from tests.unit.desk import BTC_USD, ETH_USD, T0, Desk


async def long_ten_btc(*, dry_run: bool = False) -> tuple[Desk, Session]:
    """Capital 1000, all of it in 10 BTC bought at 100 (no fees): equity = 10 * bid."""
    desk = Desk(dry_run=dry_run)
    session = await desk.start("s1", BTC_USD, capital="1000")
    await desk.buy("b1", "10", price="100")
    return desk, session


async def check(desk: Desk, session: Session, bid: str) -> StopLossReport:
    desk.set_bid(BTC_USD, bid)
    report = await desk.stoploss.check(session, await desk.data())
    assert report is not None
    return report


async def remember(desk: Desk, figures: StopLossFigures) -> None:
    """What settlement does after each run: the stop-loss figures kept in the status."""
    status = SettlementStatus(
        state=RunState.OK,
        placed=0,
        skipped=0,
        failed=0,
        errors=(),
        duration_ms=1,
        finished_at=T0,
        worker="w",
        dry_run=False,
        stoploss=figures,
    )
    await desk.ops.write_settlement_status("s1", status)


@pytest.mark.parametrize(
    ("bid", "level"),
    [
        ("95.1", StopLossLevel.NONE),  # 4.9% down
        ("95", StopLossLevel.WARN),  # 5% down: thresholds are inclusive
        ("90", StopLossLevel.HALT),
        ("85", StopLossLevel.FLATTEN),
    ],
)
async def test_each_drawdown_threshold_reaches_its_level(bid: str, level: StopLossLevel) -> None:
    desk, session = await long_ten_btc(dry_run=True)

    report = await check(desk, session, bid)

    assert report.level is level
    assert report.action == (None if level is StopLossLevel.NONE else level.value)
    assert report.equity == Decimal(bid) * 10


async def test_a_warning_alerts_but_leaves_the_session_trading() -> None:
    desk, session = await long_ten_btc()

    await check(desk, session, "94")

    assert [level for _, _, level in desk.notifier.sent] == ["warning"]
    live = await desk.live.get("s1")
    assert live is not None and live.status is SessionStatus.ACTIVE


async def test_halt_tells_the_trading_loop_to_stop_buying_in_redis_and_postgres() -> None:
    desk, session = await long_ten_btc()

    await check(desk, session, "89")

    live, row = await desk.live.get("s1"), await desk.records.get("s1")
    assert live is not None and live.status is SessionStatus.HALTED
    assert row is not None and row.status is SessionStatus.HALTED
    assert desk.exchange.batches == []  # halting sells nothing


async def test_a_level_acted_on_is_not_acted_on_again_but_a_higher_one_is() -> None:
    desk, session = await long_ten_btc()
    await remember(desk, (await check(desk, session, "94")).figures())

    again = await check(desk, session, "94")
    await remember(desk, again.figures())
    worse = await check(desk, session, "89")

    assert (again.action, again.level) == (None, StopLossLevel.WARN)
    assert worse.action == "halt"
    assert len(desk.notifier.sent) == 2


async def test_a_recovered_drawdown_keeps_the_level_already_acted_on() -> None:
    desk, session = await long_ten_btc()
    await remember(desk, (await check(desk, session, "89")).figures())

    report = await check(desk, session, "99")

    assert (report.level, report.action) == (StopLossLevel.HALT, None)


async def test_drawdown_is_measured_from_the_peak_kept_between_runs() -> None:
    desk, session = await long_ten_btc()
    peak = StopLossFigures(
        equity=Decimal("1200"),
        peak_equity=Decimal("1200"),
        drawdown=Decimal(0),
        level=StopLossLevel.NONE,
    )
    await remember(desk, peak)

    report = await check(desk, session, "100")  # equity 1000: 1/6 below the 1200 peak

    assert report.peak == Decimal("1200")
    assert report.level is StopLossLevel.FLATTEN


async def test_flatten_cancels_take_profits_and_exits_what_the_positions_hold() -> None:
    desk, session = await long_ten_btc()
    [tp] = (await desk.take_profits.create_batch("s1", await desk.uncovered(), await desk.data()))[
        BTC_USD
    ].placed
    desk.clock.advance(timedelta(minutes=5))

    report = await check(desk, session, "84")

    assert report.action == "flatten"
    assert desk.exchange.orders[tp.order_id].status is OrderStatus.CANCELED
    record = await desk.store.tp_order("s1", tp.order_id)
    assert record is not None and record.status is TpStatus.CANCELED
    [exit_batch] = desk.exchange.batches[1:]
    assert [(r.amount, r.price, r.post_only) for r in exit_batch] == [
        (Decimal("10"), Decimal("84"), False)
    ]
    p = await desk.position("b1")
    assert (p.closed, p.uncovered) == (Decimal("10"), Decimal(0))
    assert [level for _, _, level in desk.notifier.sent] == ["failure"]


async def test_an_exit_is_recorded_as_an_order_of_its_session() -> None:
    """So the fill feed attributes its fills to the session and migration counts them."""
    desk, session = await long_ten_btc()
    await check(desk, session, "84")
    [exit_request] = desk.exchange.batches[-1]
    [exit_order] = [o for o in desk.exchange.orders.values()
                    if o.client_order_id == exit_request.client_order_id]  # fmt: skip
    recorded = await desk.store.get("s1", BTC_USD, exit_order.id)
    assert recorded is not None
    assert (recorded.kind, recorded.side, recorded.amount) == (
        OrderKind.EXIT, Side.SELL, Decimal("10"))  # fmt: skip


async def test_dry_run_reports_the_level_and_does_nothing() -> None:
    desk, session = await long_ten_btc(dry_run=True)

    report = await check(desk, session, "80")

    assert report.action == "flatten"
    live = await desk.live.get("s1")
    assert live is not None and live.status is SessionStatus.ACTIVE
    assert desk.exchange.batches == []
    assert "dry-run, nothing done" in desk.notifier.sent[0][1]


async def test_a_session_without_capital_has_no_stop_loss() -> None:
    desk = Desk()
    session = await desk.start("s1", BTC_USD, capital="0")

    assert await desk.stoploss.check(session, await desk.data()) is None


def stray_fill(symbol: str = ETH_USD, quantity: str = "1") -> Fill:
    """A fill stored among BTC/USD's fills that the P&L cannot take."""
    return Fill("s1", "x1", symbol, Side.BUY, Decimal(10), Decimal(quantity), Decimal(0), T0, "t9")


@pytest.mark.parametrize(
    ("fill", "reason"),
    [(stray_fill(), "s1/ETH/USD"), (stray_fill(BTC_USD, "1E+999999"), "40 digits")],
    ids=["another-pair", "beyond-the-bound"],
)
async def test_a_fill_the_pnl_refuses_is_left_out_and_reported_and_the_stoploss_measures(
    fill: Fill, reason: str
) -> None:
    desk, session = await long_ten_btc()
    desk.store.fills[("s1", BTC_USD)][fill.key] = fill  # as a hostile writer could store it

    report = await check(desk, session, "95")

    assert (report.equity, report.level) == (Decimal(950), StopLossLevel.WARN)
    [(key, why)] = report.bad
    assert report.bad_fills == 1 and key.endswith(fill.key) and reason in why


async def test_a_refused_fill_makes_the_run_partial_and_its_key_is_in_the_errors() -> None:
    desk, _ = await long_ten_btc()
    desk.store.fills[("s1", BTC_USD)]["t:t9"] = stray_fill()

    [result] = await desk.settlement.run("s1")

    assert result.state is RunState.PARTIAL and result.stoploss is not None
    assert any("t:t9" in e and "ETH/USD" in e for e in result.errors())


async def test_flatten_leaves_out_what_a_take_profit_in_flight_may_still_sell() -> None:
    desk, session = await long_ten_btc()
    await desk.mark_pending("b1", "4")  # a take-profit sent, its answer not known yet

    report = await check(desk, session, "84")

    assert report.action == "flatten"
    [exit_batch] = desk.exchange.batches
    assert [r.amount for r in exit_batch] == [Decimal("6")]  # never 10: 4 may be sold already
