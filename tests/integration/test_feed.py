"""The fill feed on the paper venue, with real Redis and PostgreSQL: every execution the venue
reports is recorded once as a fill of its session, a dropped stream's gap is filled from the
history, and a new buy fill gets its take-profit within a second through the settle trigger.
(Attribution's rules are unit-tested in tests/unit/test_feed_service.py: this database holds
other tests' active sessions on the same pairs.)"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.paper.feed import PaperFeed
from mmops.bootstrap import build_feed, build_trigger
from mmops.domain.exchange import OrderRequest
from mmops.domain.ids import client_order_id
from mmops.domain.models import Order, Side
from mmops.domain.rounding import round_amount_down, round_price_up
from mmops.services.feed import FeedService
from tests.integration.world import World, world

pytestmark = pytest.mark.integration

BTC, ETH = "BTC/USD", "ETH/USD"


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url, settle_debounce=0.05) as w:
        await w.exchange.match(w.rt.clock.now())  # starts the venue's match clock
        yield w


async def buy(w: World, sid: str, pair: str, record: bool = True) -> str:
    """A crossing limit buy that fills at the next match; recorded as the session's order
    (as a trading loop would) unless ``record`` is False. Returns its order id."""
    venue = w.exchange
    market = (await venue.markets())[pair]
    ask = (await venue.tickers([pair]))[pair].ask
    price = round_price_up(ask * Decimal("1.002"), market.tick)
    amount = max(round_amount_down(Decimal(40) / price, market.lot), market.min_amount)
    cid = client_order_id(sid, f"buy-{uuid.uuid4().hex[:8]}", 0)
    [result] = await venue.place_batch(
        [OrderRequest(pair, Side.BUY, amount, price, cid, post_only=False)]
    )
    assert result.order is not None, result.error
    o = result.order
    if record:
        await w.rt.orders.save(Order(sid, o.id, pair, Side.BUY, o.price, o.amount, o.created_at,
                                     client_order_id=cid))  # fmt: skip
    await venue.match(w.rt.clock.now(), step_seconds=3600)
    return o.id


class Following:
    def __init__(self, service: FeedService) -> None:
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(service.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 5)


def feed_of(w: World, venue: PaperExchange | None = None) -> tuple[PaperFeed, FeedService]:
    venue = venue or w.exchange
    feed = PaperFeed(venue, poll=0.02)
    return feed, build_feed(w.rt, venue, feed)


async def eventually(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached in time")


async def venue_trades(w: World, order_ids: set[str]) -> int:
    trades, _ = await w.exchange.trades(0)
    return sum(t.order_id in order_ids for t in trades)


async def test_each_execution_is_recorded_once_even_across_a_dropped_stream(w: World) -> None:
    sid = await w.start_session([BTC, ETH])
    feed, service = feed_of(w)
    following = Following(service)
    await asyncio.sleep(0.3)
    before = [await buy(w, sid, BTC), await buy(w, sid, ETH)]
    await eventually(lambda: _count(w, sid, 2))
    feed.drop()  # the connection is lost; fills made meanwhile come from the history
    during = [await buy(w, sid, BTC) for _ in range(3)]
    ids = set(before + during)
    expected = await venue_trades(w, ids)
    await eventually(lambda: _count(w, sid, expected))
    await following.close()
    assert service.counts.reconnects >= 1
    assert await _fills(w, sid) == expected  # partial fills included, none twice
    replay = feed_of(w)[1]
    trades, _ = await w.exchange.trades(0)
    assert await replay.record([t for t in trades if t.order_id in ids]) == []  # nothing new


async def test_a_new_buy_fill_gets_its_take_profit_within_a_second(w: World) -> None:
    sid = await w.start_session([BTC, ETH])
    _, service = feed_of(w)
    trigger = build_trigger(w.rt, w.settlement())
    following = Following(service)
    settling = asyncio.create_task(trigger.run(following.stop))
    await asyncio.sleep(0.3)
    order_id = await buy(w, sid, ETH)
    filled = time.monotonic()

    async def covered() -> bool:
        [position] = (await w.rt.positions.read_many(sid, [order_id])).items or [None]
        return position is not None and bool(position.take_profits)

    await eventually(covered, timeout=3)
    took = time.monotonic() - filled
    await following.close()
    await asyncio.wait_for(settling, 5)
    assert took < 1.0, took
    [(position_id, _, status)] = await w.take_profit_orders(sid, ETH)
    assert position_id == order_id and status == "open"


async def _fills(w: World, sid: str) -> int:
    total = 0
    for pair in (BTC, ETH):
        total += int(await w.rt.redis.hlen(f"fills:{{{sid}}}:{pair}"))
    return total


async def _count(w: World, sid: str, n: int) -> bool:
    return await _fills(w, sid) >= n


async def test_the_paper_feed_reads_a_reset_venue_from_its_start(w: World) -> None:
    """A cursor past the trade list's end (the venue was reset since) reads every trade: a
    cursor kept from an earlier venue of that name never hides the new one's trades."""
    sid = await w.start_session([BTC])
    feed = PaperFeed(w.exchange)
    await buy(w, sid, BTC)
    trades, after = await feed.history("100000", w.rt.clock.now())
    assert trades and after == str(await w.exchange.trade_count())
    again, same = await feed.history(after, w.rt.clock.now())
    assert (again, same) == ([], after)
