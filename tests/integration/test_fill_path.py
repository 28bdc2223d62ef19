"""The paper venue's fill path: the quotes at every time any match looked at the price path,
with the shocks that match used, read after a cursor (real Redis)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.redis.client import Redis
from mmops.adapters.redis.prices import PriceStore
from mmops.bootstrap import Urls, open_runtime
from mmops.config import Settings
from mmops.domain.models import Ticker
from mmops.domain.records import PriceSeries
from mmops.errors import StoreUnavailable
from mmops.sim.loop import LoopConfig, TradingLoop
from tests.conftest import SessionIds

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)
PAIRS = ("BTC/USD", "ETH/USD")


@pytest.fixture
async def venue(redis: Redis) -> AsyncIterator[tuple[PaperExchange, SimulatedClock]]:
    clock = SimulatedClock(T0)
    ex = PaperExchange(redis, clock, venue=f"paper-path-{uuid.uuid4().hex[:10]}")
    yield ex, clock
    await ex.reset()


async def quotes_at(ex: PaperExchange, clock: SimulatedClock, at: datetime) -> list[tuple]:
    """The venue's own tickers at ``at`` (an independent reading of its price path)."""
    clock.advance(at - clock.now())  # only forward: callers ask in time order
    tickers = await ex.tickers(list(PAIRS))
    return [(s, tickers[s].bid, tickers[s].ask) for s in PAIRS]


async def test_every_match_is_on_the_path_whoever_called_it(
    venue: tuple[PaperExchange, SimulatedClock],
) -> None:
    ex, clock = venue
    cursor = await ex.path_cursor()
    assert cursor == "0"
    await ex.match(T0)  # starts the match clock: nothing matched yet
    assert (await ex.fill_path(PAIRS, cursor))[0] == []
    await ex.match(T0 + timedelta(seconds=60))  # another caller's match
    await ex.match(T0 + timedelta(seconds=65))
    steps, cursor = await ex.fill_path(PAIRS, cursor)
    times = [T0 + timedelta(seconds=s) for s in (10, 20, 30, 40, 50, 60, 65)]
    assert [[t.timestamp for t in step] for step in steps] == [[t, t] for t in times]
    for step, t in zip(steps, times, strict=True):
        assert [(q.symbol, q.bid, q.ask) for q in step] == await quotes_at(ex, clock, t)
    # Read again from the new cursor: nothing new until the next match.
    assert await ex.fill_path(PAIRS, cursor) == ([], cursor)
    await ex.match(T0 + timedelta(seconds=75))
    steps, _ = await ex.fill_path(PAIRS, cursor)
    assert [step[0].timestamp for step in steps] == [T0 + timedelta(seconds=75)]


async def test_the_path_keeps_the_shock_a_match_used_not_a_later_one(
    venue: tuple[PaperExchange, SimulatedClock],
) -> None:
    ex, clock = venue
    cursor = await ex.path_cursor()
    await ex.match(T0)
    await ex.shock("BTC/USD", Decimal("0.9"))
    await ex.match(T0 + timedelta(seconds=10))  # matched with the shock
    shocked = await quotes_at(ex, clock, T0 + timedelta(seconds=10))
    await ex.shock("BTC/USD", Decimal("1"))  # undone after the match
    steps, _ = await ex.fill_path(PAIRS, cursor)
    assert [[(q.symbol, q.bid, q.ask) for q in step] for step in steps] == [shocked]
    unshocked = await quotes_at(ex, clock, T0 + timedelta(seconds=10))
    assert unshocked != shocked


class FailsOnce:
    """A path recorder whose first write fails as if Redis were down."""

    def __init__(self, store: PriceStore) -> None:
        self.store = store
        self.failed = False

    async def record_path(self, session_id: str, steps: Sequence[Sequence[Ticker]]) -> None:
        if not self.failed:
            self.failed = True
            raise StoreUnavailable("Redis", "connection refused")
        await self.store.record_path(session_id, steps)


async def test_a_loop_records_on_the_next_step_what_it_could_not_record(
    redis_url: str, database_url: str, session_ids: SessionIds
) -> None:
    sid = session_ids.new("path")
    settings = Settings(redis_url=redis_url, database_url=database_url)  # type: ignore[arg-type]
    async with open_runtime(settings, Urls(redis_url, database_url)) as rt:
        clock = SimulatedClock(T0)
        ex = PaperExchange(rt.redis, clock, venue=f"paper-path-{uuid.uuid4().hex[:10]}")
        recorder = FailsOnce(rt.prices)
        loop = TradingLoop(ex, rt.registry, rt.sessions, rt.orders, rt.orders, rt.fills, clock,
                           LoopConfig(PAIRS, record_fills=False), sid, path=recorder)  # fmt: skip
        try:
            await loop.start()
            for _ in range(2):  # the first step's record fails, the second writes both
                clock.advance(timedelta(seconds=60))
                await loop.step()
            assert recorder.failed
            recorded = [t async for _, chunk in rt.prices.read_after(
                sid, None, series=PriceSeries.PATH) for t in chunk.items]  # fmt: skip
        finally:
            await ex.reset()
            await rt.session_records.delete(sid)
    times = [T0 + timedelta(seconds=10 * n) for n in range(1, 13)]
    assert [(t.symbol, t.timestamp) for t in recorded] == [(p, at) for at in times for p in PAIRS]
