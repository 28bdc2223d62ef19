"""Reconciliation against real venues: the paper venue with real Redis and PostgreSQL (whole
settlement runs), and the ccxt adapter on the Kraken test server. mmops believes the exchange:
a take-profit cancelled there is covered again within one run, one filled while mmops was
stopped is recorded as fills, an order that is not mmops's is reported and left alone."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange
from mmops.adapters.redis import keys
from mmops.bootstrap import build_reconciler
from mmops.domain.exchange import OrderRequest
from mmops.domain.models import Fill, OrderStatus, Session, Side
from mmops.domain.records import TpStatus
from mmops.domain.tiers import TierPolicy
from mmops.services.reconcile import ReconcileAction, Reconciler, ReconcileReport
from mmops.services.take_profit import TakeProfitService
from mmops.services.tp_results import MarketData, PairReport
from tests import fakes
from tests.integration.world import World, world
from tests.kraken_server import KrakenServer, make_ccxt_exchange

pytestmark = pytest.mark.integration

PAIR = "BTC/USD"


# -- the paper venue, whole settlement runs ---------------------------------------------------


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


async def covered(w: World) -> tuple[str, str, str]:
    """A session whose one position is covered by a resting take-profit: (sid, pos, order)."""
    sid = await w.start_session([PAIR])
    [position] = await w.seed_positions(sid, PAIR, [5])
    [result] = await w.settlement().run(sid)
    [placed] = result.pairs[PAIR].placed
    return sid, position, placed.order_id


async def reconcile(w: World, sid: str) -> ReconcileReport:
    session = await w.rt.registry.get(sid)
    assert session is not None
    return await build_reconciler(w.rt, w.exchange, dry_run=False).locked(session)


async def fill_on_venue(w: World, order_id: str) -> None:
    """Lift the price path over the take-profit and match (as contract's PaperVenue.fill)."""
    clock = SimulatedClock(w.rt.clock.now())
    venue = w.venue(clock=clock)
    await venue.match()
    await venue.shock(PAIR, Decimal(2))
    clock.advance(timedelta(seconds=120))
    await venue.match()
    await venue.shock(PAIR, Decimal(1))
    assert (await w.exchange.fetch_order(PAIR, order_id)).status is OrderStatus.FILLED


async def test_paper_a_take_profit_cancelled_on_the_venue_is_covered_again_within_one_run(
    w: World,
) -> None:
    sid, position, order_id = await covered(w)
    await w.exchange.cancel(PAIR, order_id)  # a person, on the venue

    [result] = await w.settlement().run(sid)

    record = await w.rt.positions.tp_order(sid, order_id)
    assert record is not None and record.status is TpStatus.GONE
    [again] = result.pairs[PAIR].placed
    assert again.position_id == position and again.order_id != order_id
    assert result.to_dict()["pairs"][PAIR]["counts"]["released"] == 1
    assert all(p.uncovered == 0 for p in await w.positions(sid, PAIR))


async def test_paper_a_take_profit_filled_while_mmops_was_stopped_is_recorded_at_the_next_run(
    w: World,
) -> None:
    sid, _, order_id = await covered(w)
    await fill_on_venue(w, order_id)  # no settlement running meanwhile

    [result] = await w.settlement().run(sid)

    assert result.to_dict()["pairs"][PAIR]["counts"]["recorded_fill"] == 1
    record = await w.rt.positions.tp_order(sid, order_id)
    assert record is not None and record.status is TpStatus.FILLED
    trades, _ = await w.exchange.trades()
    mine = {f"t:{t.id}" for t in trades if t.order_id == order_id}
    recorded = await w.rt.redis.hgetall(keys.fills(sid, PAIR))
    assert mine and mine <= set(recorded)  # by the venue's trade ids, as the fill feed
    assert result.pairs[PAIR].placed == []  # it keeps covering what it sold
    assert (await reconcile(w, sid)).rows == ()  # nothing left to look at, nothing twice


async def test_paper_an_unknown_sell_on_the_account_is_reported_and_untouched(w: World) -> None:
    sid, _, _ = await covered(w)
    ticker = (await w.exchange.tickers([PAIR]))[PAIR]
    await w.exchange.fund("BTC", Decimal("0.01"))
    [manual] = await w.exchange.place_batch(
        [OrderRequest(PAIR, Side.SELL, Decimal("0.01"), ticker.ask * 2, str(uuid.uuid4()))]
    )
    assert manual.order is not None

    report = await reconcile(w, sid)

    [unknown] = [r for r in report.rows if r.order_id == manual.order.id]
    assert unknown.action is ReconcileAction.REPORTED_UNKNOWN
    assert (await w.exchange.fetch_order(PAIR, manual.order.id)).status is OrderStatus.OPEN


# -- the Kraken test server -------------------------------------------------------------------


@dataclass
class Desk:
    server: KrakenServer
    exchange: CcxtExchange
    clock: SimulatedClock
    store: fakes.MemoryStore
    take_profits: TakeProfitService
    reconciler: Reconciler
    session: Session

    async def data(self) -> MarketData:
        ex = self.exchange
        return MarketData(await ex.markets(), await ex.tickers([PAIR]), await ex.balances())

    async def cover(self, data: MarketData | None = None) -> PairReport:
        uncovered = {PAIR: (await self.store.uncovered("s1", PAIR)).items}
        reports = await self.take_profits.create_batch("s1", uncovered, data or await self.data())
        return reports[PAIR]

    async def run(self) -> tuple[ReconcileReport, PairReport]:
        """A settlement run's order: reconcile first, then cover what is uncovered."""
        return await self.reconciler.session(self.session), await self.cover()

    async def uncovered(self) -> Decimal:
        [p] = (await self.store.read_many("s1", ["b1"])).items
        return p.uncovered


@pytest.fixture
async def kraken() -> AsyncIterator[Desk]:
    with KrakenServer() as server:
        clock = SimulatedClock(datetime.now(UTC))  # the server checks deadlines on its clock
        store = fakes.MemoryStore(fakes.FakeClaims(clock))
        exchange = make_ccxt_exchange(server, ticker_ttl=0.0)
        tp = TakeProfitService(store, store.claims, exchange, TierPolicy(), clock)  # type: ignore[arg-type]
        reconciler = Reconciler(store, store, store, store, exchange)
        server.fund("BTC", "1")
        await store.record(
            Fill("s1", "b1", PAIR, Side.BUY, Decimal("60000"), Decimal("0.01"), Decimal(0),
                 clock.now())
        )  # fmt: skip
        session = Session("s1", (PAIR,), clock.now() - timedelta(hours=1))
        try:
            yield Desk(server, exchange, clock, store, tp, reconciler, session)
        finally:
            await exchange.close()


async def test_kraken_an_engine_cancelled_post_only_take_profit_is_placed_again(
    kraken: Desk,
) -> None:
    d = kraken
    stale = await d.data()
    d.server.set_quote(PAIR, "70000", "70000.1")  # the book moved through the TP's price
    [placed] = (await d.cover(stale)).placed  # accepted with a txid ...
    assert d.server.order(placed.order_id)["reason"] == "Post only order"  # ... then cancelled

    report, pair = await d.run()

    assert [r.action for r in report.rows] == [ReconcileAction.RELEASED]
    record = await d.store.tp_order("s1", placed.order_id)
    assert record is not None and record.status is TpStatus.GONE
    [again] = pair.placed
    assert again.client_order_id != placed.client_order_id  # the generation moved on
    assert d.server.order(again.order_id)["status"] == "open"


async def test_kraken_a_take_profit_cancelled_on_the_venue_is_covered_again_in_one_run(
    kraken: Desk,
) -> None:
    d = kraken
    [placed] = (await d.cover()).placed
    await d.exchange.cancel(PAIR, placed.order_id)  # a person, on Kraken's website

    report, pair = await d.run()

    assert [(r.exchange, r.action) for r in report.rows] == [
        (OrderStatus.CANCELED, ReconcileAction.RELEASED)
    ]
    assert len(pair.placed) == 1 and await d.uncovered() == 0


async def test_kraken_a_take_profit_filled_while_stopped_is_recorded_by_its_trade_txid(
    kraken: Desk,
) -> None:
    d = kraken
    [placed] = (await d.cover()).placed
    d.server.fill(placed.order_id)  # mmops is stopped: nobody watches
    calls = Counter(d.server.stats.calls)

    report, pair = await d.run()

    sent = d.server.stats.calls - calls
    assert sent["QueryOrders"] >= 1 and sent["QueryTrades"] == 1
    [row] = report.rows
    assert (row.exchange, row.filled, row.action) == (
        OrderStatus.FILLED, Decimal("0.01"), ReconcileAction.RECORDED_FILL)  # fmt: skip
    trade_txids = [t for t, v in d.server._trades.items() if v["ordertxid"] == placed.order_id]
    sells = {k for k, f in d.store.fills[("s1", PAIR)].items() if f.side is Side.SELL}
    assert sells == {f"t:{txid}" for txid in trade_txids}
    record = await d.store.tp_order("s1", placed.order_id)
    assert record is not None and record.status is TpStatus.FILLED
    assert pair.placed == [] and await d.uncovered() == 0


async def test_kraken_an_unknown_sell_is_reported_and_untouched(kraken: Desk) -> None:
    d = kraken
    [placed] = (await d.cover()).placed
    [manual] = await d.exchange.place_batch(
        [OrderRequest(PAIR, Side.SELL, Decimal("0.01"), Decimal("90000"), str(uuid.uuid4()))]
    )
    assert manual.order is not None

    report, _ = await d.run()

    actions = {r.order_id: r.action for r in report.rows}
    assert actions == {
        placed.order_id: ReconcileAction.NONE,
        manual.order.id: ReconcileAction.REPORTED_UNKNOWN,
    }
    assert d.server.order(manual.order.id)["status"] == "open"
