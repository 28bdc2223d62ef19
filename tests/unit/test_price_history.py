"""Settlement records each run's tickers of the pairs it settles (price history for analytics
and the tier backtest), once per session and run, and a failure to record never fails the
run."""

from __future__ import annotations

from collections.abc import Sequence

from mmops.domain.models import Ticker
from mmops.domain.records import RunState
from mmops.errors import StoreUnavailable
from mmops.ports import PriceRecorder
from mmops.services.settlement import SettlementService
from tests.unit.desk import BTC_EUR, BTC_USD, ETH_USD, Desk


class MemoryPrices:
    """PriceRecorder in memory: the calls it got."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Ticker]]] = []

    async def record(self, session_id: str, tickers: Sequence[Ticker]) -> None:
        self.calls.append((session_id, list(tickers)))


class DownPrices:
    def __init__(self) -> None:
        self.tried = 0

    async def record(self, session_id: str, tickers: Sequence[Ticker]) -> None:
        self.tried += 1
        raise StoreUnavailable("Redis", "connection refused")


def settlement(desk: Desk, prices: PriceRecorder) -> SettlementService:
    """The desk's settlement service, with a price recorder."""
    return SettlementService(
        registry=desk.registry, positions=desk.store, records=desk.ops, runs=desk.runs,
        locks=desk.locks, exchange=desk.exchange, take_profits=desk.take_profits,
        stoploss=desk.stoploss, repricer=desk.repricer, clock=desk.clock, hours_back=24,
        session_limit=10, worker="w-test", prices=prices,
    )  # fmt: skip


async def test_a_full_run_records_the_tickers_of_each_sessions_pairs_once() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD, ETH_USD)
    await desk.start("s2", BTC_EUR)
    prices = MemoryPrices()
    results = await settlement(desk, prices).run()
    assert {r.session_id for r in results} == {"s1", "s2"}
    recorded = {sid: [(t.symbol, t.bid) for t in tickers] for sid, tickers in prices.calls}
    assert len(prices.calls) == 2  # one store call per session
    assert recorded["s1"] == [(BTC_USD, desk.exchange.tickers_by_symbol[BTC_USD].bid),
                              (ETH_USD, desk.exchange.tickers_by_symbol[ETH_USD].bid)]  # fmt: skip
    assert [s for s, _ in recorded["s2"]] == [BTC_EUR]


async def test_a_quick_run_records_the_tickers_of_the_pairs_it_settles_only() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD, ETH_USD)
    prices = MemoryPrices()
    await settlement(desk, prices).run("s1", pairs=[BTC_USD])
    assert [(sid, [t.symbol for t in tickers]) for sid, tickers in prices.calls] == [
        ("s1", [BTC_USD])
    ]


async def test_a_recorder_that_fails_does_not_fail_the_run() -> None:
    desk = Desk()
    await desk.start("s1", BTC_USD)
    await desk.buy("p1", "0.5")
    down = DownPrices()
    [result] = await settlement(desk, down).run("s1")
    assert down.tried == 1
    assert result.state is RunState.OK, result.errors()
    assert result.totals()["placed"] == 1
