"""The fill feed and the settle trigger against the Kraken test server, with real Redis and
PostgreSQL: fills arrive over WebSocket v2 and get their take-profits within a second; the
connection dropped mid-stream, the fills made during the gap come back from TradesHistory,
and none is recorded twice."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal

import pytest

from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange
from mmops.adapters.exchanges.kraken_feed import KrakenFeed
from mmops.bootstrap import build_feed, build_trigger
from mmops.domain.exchange import OrderRequest
from mmops.domain.models import Order, Side
from tests.integration.world import World, world
from tests.kraken_server import KrakenServer, make_ccxt_exchange

pytestmark = pytest.mark.integration

BTC = "BTC/USD"
BID, ASK = Decimal("60000.0"), Decimal("60010.0")


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url, settle_debounce=0.05) as w:
        yield w


@pytest.fixture
async def server() -> AsyncIterator[KrakenServer]:
    with KrakenServer() as s:
        s.set_quote(BTC, BID, ASK)
        s.fund("USD", "1000000")
        yield s


@pytest.fixture
async def kraken(server: KrakenServer) -> AsyncIterator[CcxtExchange]:
    async with make_ccxt_exchange(server, ticker_ttl=0.0) as ex:
        yield ex


async def resting_buy(w: World, kraken: CcxtExchange, sid: str) -> str:
    """A post-only bid below the book, recorded as the session's order (as a market maker
    records its quotes). Returns its txid."""
    cid = str(uuid.uuid4())
    request = OrderRequest(BTC, Side.BUY, Decimal("0.01"), Decimal("59990.0"), cid)
    [result] = await kraken.place_batch([request])
    assert result.order is not None, result.error
    o = result.order
    await w.rt.orders.save(Order(sid, o.id, BTC, Side.BUY, o.price, o.amount, o.created_at,
                                 client_order_id=cid))  # fmt: skip
    return o.id


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached in time")


async def test_fills_over_the_websocket_get_take_profits_and_a_gap_is_filled_once(
    w: World, server: KrakenServer, kraken: CcxtExchange
) -> None:
    sid = await w.start_session([BTC])
    orders = [await resting_buy(w, kraken, sid) for _ in range(5)]
    feed = KrakenFeed(kraken, ws_url=server.ws_url, idle_timeout=3.0)
    service = build_feed(w.rt, kraken, feed)
    trigger = build_trigger(w.rt, w.settlement(kraken))
    stop = asyncio.Event()
    loops = [asyncio.create_task(service.run(stop)), asyncio.create_task(trigger.run(stop))]
    fills_key = f"fills:{{{sid}}}:{BTC}"
    try:
        await eventually(lambda: _subscribed(server))

        server.fill(orders[0])  # over the WebSocket
        filled = time.monotonic()

        async def covered() -> bool:
            [p] = (await w.rt.positions.read_many(sid, [orders[0]])).items or [None]
            return p is not None and bool(p.take_profits)

        await eventually(covered)
        took = time.monotonic() - filled

        server.pause_executions()  # the connection dies; fills made meanwhile are not pushed
        server.drop_websockets()
        server.fill(orders[1], "0.004")
        server.fill(orders[1])
        server.fill(orders[2])
        server.pause_executions(False)
        server.fill(orders[3])  # after the reconnect, over the WebSocket again

        async def all_recorded() -> bool:
            return int(await w.rt.redis.hlen(fills_key)) >= 5

        await eventually(all_recorded)
        await asyncio.sleep(0.5)  # any duplicate would arrive by now
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*loops, return_exceptions=True), 10)
        await feed.close()
    assert took < 1.0, took
    assert service.counts.reconnects >= 1
    assert int(await w.rt.redis.hlen(fills_key)) == 5  # five executions, each once
    assert service.counts.recorded == 5
    positions = {p.position_id: p for p in await w.positions(sid, BTC)}
    assert sorted(positions) == sorted(orders[:4])
    assert positions[orders[1]].filled == Decimal("0.01")  # its two partial fills, once each


async def _subscribed(server: KrakenServer) -> bool:
    return server.ws_subscribers() > 0
