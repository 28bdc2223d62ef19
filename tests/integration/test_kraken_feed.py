"""The Kraken execution feed against the local Kraken server: fills over WebSocket v2 as
Decimal Trades, a dropped or silent connection ending the stream, and TradesHistory filling
the gap with the same trade ids."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import aiohttp
import pytest

from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange
from mmops.adapters.exchanges.kraken_feed import KrakenFeed, account_of, execution_trade
from mmops.domain.exchange import OrderRequest, Trade
from mmops.domain.models import Side
from mmops.errors import FeedDisconnected
from tests.kraken_server import KrakenServer, make_ccxt_exchange

pytestmark = pytest.mark.integration

BTC = "BTC/USD"
BID, ASK = Decimal("60000.0"), Decimal("60010.0")
WAIT = 5.0  # seconds any single expected event may take


@pytest.fixture
def server() -> Iterator[KrakenServer]:
    with KrakenServer() as s:
        s.set_quote(BTC, BID, ASK)
        s.fund("USD", "1000000")
        s.fund("BTC", "10")
        yield s
        assert s.stats.errors == []


@pytest.fixture
async def exchange(server: KrakenServer) -> AsyncIterator[CcxtExchange]:
    async with make_ccxt_exchange(server) as ex:
        yield ex


@pytest.fixture
async def feed(server: KrakenServer, exchange: CcxtExchange) -> AsyncIterator[KrakenFeed]:
    f = KrakenFeed(
        exchange, account=account_of("kraken", "k"), ws_url=server.ws_url, idle_timeout=3.0
    )
    yield f
    await f.close()


class Streaming:
    """``feed.stream()`` consumed by a task; its batches readable one by one."""

    def __init__(self, feed: KrakenFeed) -> None:
        self.batches: asyncio.Queue[list[Trade]] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump(feed))

    async def _pump(self, feed: KrakenFeed) -> None:
        async for batch in feed.stream():
            await self.batches.put(batch)

    async def next(self) -> list[Trade]:
        getter = asyncio.ensure_future(self.batches.get())
        done, _ = await asyncio.wait(
            {getter, self.task}, timeout=WAIT, return_when="FIRST_COMPLETED"
        )
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.task in done:
            self.task.result()  # raises what the stream raised
        raise AssertionError("no batch in time")

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, FeedDisconnected):
            await self.task


@pytest.fixture
async def streaming(feed: KrakenFeed) -> AsyncIterator[Streaming]:
    s = Streaming(feed)
    assert await s.next() == []  # the subscription's ack: live from now on
    yield s
    await s.stop()


async def place(
    exchange: CcxtExchange, side: Side = Side.BUY, amount: str = "0.05", price: str = "59990.0"
) -> tuple[str, str]:
    """A resting post-only order on BTC/USD; its (txid, client order id)."""
    client_id = str(uuid.uuid4())
    request = OrderRequest(BTC, side, Decimal(amount), Decimal(price), client_id)
    [result] = await exchange.place_batch([request])
    assert result.order is not None, result.error
    return result.order.id, client_id


def since() -> datetime:
    return datetime.now(UTC) - timedelta(minutes=1)


async def test_a_fill_arrives_over_the_websocket_as_a_decimal_trade_with_its_fields(
    server: KrakenServer, exchange: CcxtExchange, streaming: Streaming
) -> None:
    order_id, client_id = await place(exchange, Side.BUY, "0.05", "59990.0")
    server.fill(order_id, "0.02")

    [trade] = await streaming.next()

    assert trade.order_id == order_id
    assert trade.client_order_id == client_id
    assert (trade.symbol, trade.side) == (BTC, Side.BUY)
    assert trade.price == Decimal("59990.0") and isinstance(trade.price, Decimal)
    assert trade.amount == Decimal("0.02") and isinstance(trade.amount, Decimal)
    maker_fee = (await exchange.markets())[BTC].maker_fee
    assert trade.fee == Decimal("59990.0") * Decimal("0.02") * maker_fee
    assert trade.timestamp.tzinfo is not None
    assert abs(trade.timestamp - datetime.now(UTC)) < timedelta(seconds=5)
    assert trade.id.startswith("T")


async def test_a_dropped_connection_ends_the_stream_with_feed_disconnected(
    server: KrakenServer, streaming: Streaming
) -> None:
    assert server.drop_websockets() == 1
    with pytest.raises(FeedDisconnected):
        await asyncio.wait_for(streaming.task, WAIT)


async def test_a_silent_connection_ends_the_stream_after_the_idle_timeout(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    server.ws_heartbeat = None
    feed = KrakenFeed(exchange, account="kraken:test", ws_url=server.ws_url, idle_timeout=0.5)
    try:
        streaming = Streaming(feed)
        assert await streaming.next() == []
        with pytest.raises(FeedDisconnected, match="no message"):
            await asyncio.wait_for(streaming.task, WAIT)
    finally:
        await feed.close()


async def test_heartbeats_keep_a_quiet_connection_alive(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    feed = KrakenFeed(exchange, account="kraken:test", ws_url=server.ws_url, idle_timeout=1.5)
    streaming = Streaming(feed)
    try:
        assert await streaming.next() == []
        await asyncio.sleep(3.5)  # longer than the idle timeout, heartbeats every second
        assert not streaming.task.done()
    finally:
        await streaming.stop()
        await feed.close()


async def test_fills_made_while_disconnected_come_back_from_history_across_pages(
    server: KrakenServer, exchange: CcxtExchange, feed: KrakenFeed, streaming: Streaming
) -> None:
    start = since()
    order_id, _ = await place(exchange, Side.BUY, "0.70")
    server.fill(order_id, "0.01")
    [seen] = await streaming.next()
    _, cursor = await feed.history(None, start)

    server.drop_websockets()
    with pytest.raises(FeedDisconnected):
        await asyncio.wait_for(streaming.task, WAIT)
    missed = [server.fill(order_id, "0.01") for _ in range(60)]  # more than one 50-trade page
    assert len(missed) == 60
    calls = server.stats.calls["TradesHistory"]

    trades, after = await feed.history(cursor, start)

    ids = [t.id for t in trades]
    assert len(set(ids)) == len(ids)
    gap = [t for t in trades if t.id != seen.id]
    assert len(gap) == 60
    assert all(t.amount == Decimal("0.01") and t.order_id == order_id for t in gap)
    assert trades == sorted(trades, key=lambda t: t.timestamp)  # oldest first
    assert server.stats.calls["TradesHistory"] - calls == 2  # 50 + 11 (with the overlap)
    assert Decimal(after) >= Decimal(cursor)
    again, _ = await feed.history(after, start)
    assert {t.id for t in again} <= set(ids)  # nothing new: only the overlap comes back


async def test_history_and_stream_give_one_execution_the_same_trade(
    server: KrakenServer, exchange: CcxtExchange, feed: KrakenFeed, streaming: Streaming
) -> None:
    start = since()
    buy_id, _ = await place(exchange, Side.BUY, "0.05", "59990.0")
    sell_id, _ = await place(exchange, Side.SELL, "0.03", "60020.0")
    server.fill(buy_id, "0.02")
    server.fill(sell_id)
    server.fill(buy_id)
    streamed = [t for _ in range(3) for t in await streaming.next()]

    history, _ = await feed.history(None, start)

    assert [t.id for t in history] == [t.id for t in streamed]
    for live, read in zip(streamed, history, strict=True):
        assert abs(live.timestamp - read.timestamp) < timedelta(milliseconds=1)
        assert (live.order_id, live.symbol, live.side, live.price, live.amount, live.fee) == (
            read.order_id,
            read.symbol,
            read.side,
            read.price,
            read.amount,
            read.fee,
        )


async def test_paused_fills_are_not_pushed_but_history_has_them(
    server: KrakenServer, exchange: CcxtExchange, feed: KrakenFeed, streaming: Streaming
) -> None:
    start = since()
    order_id, _ = await place(exchange, Side.BUY, "0.05")
    server.pause_executions()
    server.fill(order_id, "0.01")
    server.pause_executions(False)
    server.fill(order_id, "0.02")

    [pushed] = await streaming.next()
    history, _ = await feed.history(None, start)

    assert pushed.amount == Decimal("0.02")
    assert [t.amount for t in history] == [Decimal("0.01"), Decimal("0.02")]
    assert history[1].id == pushed.id


async def test_a_subscription_with_a_token_the_server_never_issued_is_refused(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    good = await exchange.websocket_token()
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
        status = await ws.receive_json(timeout=WAIT)
        assert status["channel"] == "status"
        answers = []
        for req_id, token in ((1, "not-a-kraken-token"), (2, good)):
            params = {"channel": "executions", "token": token, "snap_trades": False}
            await ws.send_str(
                json.dumps({"method": "subscribe", "params": params, "req_id": req_id})
            )
            answers.append(await ws.receive_json(timeout=WAIT))

    refused, accepted = answers
    assert refused["success"] is False and refused["error"] == "ESession:Invalid session"
    assert refused["req_id"] == 1 and "result" not in refused
    assert accepted["success"] is True and accepted["req_id"] == 2
    assert accepted["result"]["channel"] == "executions"
    assert {"time_in", "time_out"} <= accepted.keys()


async def test_a_token_older_than_15_minutes_is_refused(
    server: KrakenServer, exchange: CcxtExchange
) -> None:
    token = await exchange.websocket_token()
    server.advance(901)
    async with aiohttp.ClientSession() as session, session.ws_connect(server.ws_url) as ws:
        await ws.receive_json(timeout=WAIT)  # status
        params = {"channel": "executions", "token": token}
        await ws.send_str(json.dumps({"method": "subscribe", "params": params}))
        answer = await ws.receive_json(timeout=WAIT)
    assert answer["success"] is False and answer["error"] == "ESession:Invalid session"


def test_an_execution_fee_in_base_is_converted_to_quote_and_xbt_read_as_btc() -> None:
    trade = execution_trade(
        json.loads(
            '{"exec_type": "trade", "exec_id": "TABCDE-FGHIJ-KLMNOP", "order_id": "O1",'
            ' "symbol": "XBT/USD", "side": "sell", "last_qty": 0.1, "last_price": 60000.5,'
            ' "fees": [{"asset": "XBT", "qty": 0.00016}],'
            ' "timestamp": "2026-11-26T08:00:00.123456Z"}',
            parse_float=Decimal,
        )
    )
    assert trade.symbol == BTC
    assert trade.fee == Decimal("0.00016") * Decimal("60000.5")
    assert trade.timestamp == datetime(2026, 11, 26, 8, 0, 0, 123456, tzinfo=UTC)
    assert trade.client_order_id is None


async def test_the_default_account_names_the_exchange_and_hides_its_key(
    server: KrakenServer,
) -> None:
    key, secret = server.new_key()
    async with make_ccxt_exchange(server, api_key=key, api_secret=secret) as exchange:
        feed = KrakenFeed(exchange, server.ws_url)
        assert feed.account == account_of("kraken", key)
        assert key not in feed.account and secret not in feed.account


def test_the_account_name_is_stable_and_does_not_contain_the_key() -> None:
    key = "secret-api-key-" + uuid.uuid4().hex
    assert account_of("kraken", key) == account_of("kraken", key)
    assert key not in account_of("kraken", key)
    assert account_of("kraken", key) != account_of("kraken", key + "x")
