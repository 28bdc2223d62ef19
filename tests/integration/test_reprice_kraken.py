"""Repricing and coverage against the Kraken test server: an aged take-profit is amended in
place (one AmendOrder, same txid, never uncovered), and a cancel answered pending is not a
release. (An engine-cancelled post-only take-profit is reconciliation's: tests/integration/
test_reconcile.py.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange
from mmops.domain.models import Fill, Position, Side
from mmops.domain.records import TpStatus
from mmops.domain.tiers import TierPolicy
from mmops.services.reprice import Repricer
from mmops.services.take_profit import TakeProfitService
from mmops.services.tp_results import MarketData, PairReport
from tests import fakes
from tests.kraken_server import KrakenServer, make_ccxt_exchange

pytestmark = pytest.mark.integration

SYMBOL = "BTC/USD"


class NeverReleased(fakes.MemoryStore):
    """A store that fails the test if any take-profit's coverage is released."""

    async def release_coverage(self, *args: object, **kw: object) -> None:
        raise AssertionError("the position was uncovered")


@dataclass
class Desk:
    server: KrakenServer
    exchange: CcxtExchange
    clock: SimulatedClock
    store: fakes.MemoryStore
    take_profits: TakeProfitService
    repricer: Repricer

    async def data(self) -> MarketData:
        ex = self.exchange
        return MarketData(await ex.markets(), await ex.tickers([SYMBOL]), await ex.balances())

    async def position(self) -> Position:
        [p] = (await self.store.read_many("s1", ["b1"])).items
        return p

    async def cover(self, data: MarketData | None = None) -> PairReport:
        uncovered = {SYMBOL: (await self.store.uncovered("s1", SYMBOL)).items}
        reports = await self.take_profits.create_batch("s1", uncovered, data or await self.data())
        return reports[SYMBOL]

    async def reprice(self, data: MarketData | None = None) -> set[str]:
        positions = (await self.store.all("s1", SYMBOL)).items
        return await self.repricer.run(positions, PairReport(SYMBOL), data)


async def desk(server: KrakenServer, store: fakes.MemoryStore) -> AsyncIterator[Desk]:
    clock = SimulatedClock(datetime.now(UTC))  # the server checks deadlines on its own clock
    claims = fakes.FakeClaims(clock)
    store.claims = claims
    exchange = make_ccxt_exchange(server, ticker_ttl=0.0)
    tiers = TierPolicy()
    tp = TakeProfitService(store, claims, exchange, tiers, clock)
    server.fund("BTC", "1")
    await store.record(
        Fill("s1", "b1", SYMBOL, Side.BUY, Decimal("60000"), Decimal("0.01"), Decimal(0),
             clock.now())
    )  # fmt: skip
    try:
        yield Desk(server, exchange, clock, store, tp, Repricer(store, exchange, tiers, clock))
    finally:
        await exchange.close()


@pytest.fixture
async def amend_desk() -> AsyncIterator[Desk]:
    with KrakenServer() as server:
        async for d in desk(server, NeverReleased()):
            yield d


@pytest.fixture
async def kraken_desk() -> AsyncIterator[Desk]:
    with KrakenServer() as server:
        async for d in desk(server, fakes.MemoryStore()):
            yield d


async def test_repricing_a_resting_take_profit_sends_one_amend_order_and_keeps_its_txid(
    amend_desk: Desk,
) -> None:
    d = amend_desk
    [placed] = (await d.cover()).placed
    before = d.server.order(placed.order_id)
    d.clock.advance(timedelta(minutes=61))  # the position ages into a lower tier
    calls = dict(d.server.stats.calls)

    assert await d.reprice(await d.data()) == set()

    sent = d.server.stats.calls - Counter(calls)
    assert sent["AmendOrder"] == 1
    assert sent["CancelOrder"] == sent["AddOrder"] == sent["AddOrderBatch"] == 0
    after = d.server.order(placed.order_id)
    assert after["status"] == "open" and after["cl_ord_id"] == before["cl_ord_id"]
    assert Decimal(after["descr"]["price"]) < Decimal(before["descr"]["price"])
    record = await d.store.tp_order("s1", placed.order_id)
    assert record is not None and record.status is TpStatus.OPEN
    assert record.price == Decimal(after["descr"]["price"]) and record.tier == 60
    p = await d.position()
    assert p.uncovered == 0 and [oid for oid, _ in p.take_profits] == [placed.order_id]


async def test_a_refused_amend_falls_back_to_cancel_and_replace(kraken_desk: Desk) -> None:
    d = kraken_desk
    [placed] = (await d.cover()).placed
    d.clock.advance(timedelta(minutes=61))
    data = await d.data()
    d.server.set_quote(SYMBOL, "70000", "70000.1")  # every new price would now cross

    assert await d.reprice(data) == {"b1"}

    assert d.server.order(placed.order_id)["status"] == "canceled"
    record = await d.store.tp_order("s1", placed.order_id)
    assert record is not None and record.status is TpStatus.REPLACED
    assert (await d.position()).uncovered == Decimal("0.01")


async def test_a_pending_cancel_keeps_covering_and_a_fill_meanwhile_is_recorded(
    kraken_desk: Desk,
) -> None:
    d = kraken_desk
    d.server.cancel_pending = True
    [placed] = (await d.cover()).placed
    d.clock.advance(timedelta(minutes=61))

    assert await d.reprice() == set()  # no market data: cancel/replace, answered pending

    record = await d.store.tp_order("s1", placed.order_id)
    assert record is not None and record.status is TpStatus.OPEN
    assert (await d.position()).uncovered == 0
    d.server.fill(placed.order_id)
    assert await d.reprice() == set()
    record = await d.store.tp_order("s1", placed.order_id)
    assert record is not None and record.status is TpStatus.FILLED
    assert (await d.position()).uncovered == 0


async def test_a_pending_cancel_is_released_once_the_exchange_shows_it_cancelled(
    kraken_desk: Desk,
) -> None:
    d = kraken_desk
    d.server.cancel_pending = True
    assert len((await d.cover()).placed) == 1
    d.clock.advance(timedelta(minutes=61))
    assert await d.reprice() == set()
    d.server.settle_cancels()

    assert await d.reprice() == {"b1"}

    assert (await d.position()).uncovered == Decimal("0.01")
