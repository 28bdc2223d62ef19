"""The venues the contract suite runs against, behind one small test-side interface."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.paper.exchange import PaperExchange, PostOnlyCross
from mmops.adapters.paper.faults import FaultPlan
from mmops.adapters.redis.client import Redis
from mmops.domain.models import OrderStatus, PairStatus
from mmops.ports import Exchange
from tests.kraken_server import KrakenServer, make_ccxt_exchange


class Venue(Protocol):
    exchange: Exchange
    post_only_cross: str  # "cancel": accepted, then cancelled by the engine; "reject": refused

    def pend_cancels(self) -> None:
        """From now on a cancel is answered pending: the order stays open until settled."""
        ...

    async def settle_cancels(self) -> None:
        """The venue completes every pending cancel."""
        ...

    async def fund(self, asset: str, amount: Decimal) -> None: ...

    def now(self) -> datetime:
        """The venue's clock: what an order's deadline is compared with on arrival."""
        ...

    def advance(self, seconds: float) -> None:
        """Move the venue's clock on, as if the next request were held up that long."""
        ...

    async def fill(self, symbol: str, order_id: str) -> None:
        """Fill a resting sell completely."""
        ...

    def timing_out_after_accept(self) -> Exchange:
        """An exchange on the same venue whose next placement is accepted, then times out."""
        ...

    async def set_pair_status(self, symbol: str, status: PairStatus) -> None:
        """Put a pair in one of Kraken's modes (``post_only``, ``cancel_only``, ...)."""
        ...

    def throttling_next_call(self) -> Exchange:
        """An exchange on the same venue whose next call is refused as too many concurrent
        requests (Kraken's ``EService:Throttled``)."""
        ...


class PaperVenue:
    def __init__(self, redis: Redis, post_only_cross: PostOnlyCross = "cancel") -> None:
        self.redis = redis
        self.venue = f"contract-{uuid.uuid4().hex[:10]}"
        self.clock = SimulatedClock(datetime(2026, 11, 1, 12, 0, tzinfo=UTC))
        self.post_only_cross = post_only_cross
        self.exchange: PaperExchange = PaperExchange(
            redis, self.clock, venue=self.venue, post_only_cross=post_only_cross
        )

    def pend_cancels(self) -> None:
        self.exchange.cancel_pending = True

    async def settle_cancels(self) -> None:
        await self.exchange.settle_cancels()

    async def fund(self, asset: str, amount: Decimal) -> None:
        await self.exchange.fund(asset, amount)

    def now(self) -> datetime:
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        self.clock.advance(timedelta(seconds=seconds))

    async def fill(self, symbol: str, order_id: str) -> None:
        """Lift the price path over the order for two minutes and match: it fills (a partial
        fill needs the venue's coin to come up on every one of twelve crossings)."""
        await self.exchange.match()  # starts the match clock if nothing did yet
        await self.exchange.shock(symbol, Decimal(2))
        self.advance(120)
        await self.exchange.match()
        await self.exchange.shock(symbol, Decimal(1))
        order = await self.exchange.fetch_order(symbol, order_id)
        assert order.status is OrderStatus.FILLED, order

    def timing_out_after_accept(self) -> Exchange:
        return PaperExchange(
            self.redis,
            self.clock,
            venue=self.venue,
            faults=FaultPlan(timeout_after_accept=frozenset({1})),
        )

    async def set_pair_status(self, symbol: str, status: PairStatus) -> None:
        await self.exchange.set_pair_status(symbol, status)

    def throttling_next_call(self) -> Exchange:
        return PaperExchange(
            self.redis,
            self.clock,
            venue=self.venue,
            faults=FaultPlan(throttle_calls=frozenset({1})),
        )


@asynccontextmanager
async def paper_venue(
    redis: Redis, post_only_cross: PostOnlyCross = "cancel"
) -> AsyncIterator[PaperVenue]:
    venue = PaperVenue(redis, post_only_cross)
    try:
        yield venue
    finally:
        await venue.exchange.reset()


class KrakenVenue:
    """The ccxt adapter against the local server that speaks Kraken's REST."""

    def __init__(self, server: KrakenServer) -> None:
        self.server = server
        self.post_only_cross: str = server.post_only_cross
        self.exchange: Exchange = make_ccxt_exchange(server)
        self._extra: list[Exchange] = []

    def pend_cancels(self) -> None:
        self.server.cancel_pending = True

    async def settle_cancels(self) -> None:
        self.server.settle_cancels()

    async def fund(self, asset: str, amount: Decimal) -> None:
        self.server.fund(asset, amount)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.server.now(), UTC)

    def advance(self, seconds: float) -> None:
        self.server.advance(seconds)

    async def fill(self, symbol: str, order_id: str) -> None:
        self.server.fill(order_id)

    def timing_out_after_accept(self) -> Exchange:
        self.server.timeout_after_accept(self.server.stats.placements + 1, 1.5)
        flaky = make_ccxt_exchange(self.server, timeout=0.5)
        self._extra.append(flaky)
        return flaky

    async def set_pair_status(self, symbol: str, status: PairStatus) -> None:
        self.server.set_pair(symbol, status=status.value)

    def throttling_next_call(self) -> Exchange:
        self.server.fail_private_call(self.server.stats.private_calls + 1, "throttled")
        return self.exchange

    async def close(self) -> None:
        for exchange in [self.exchange, *self._extra]:
            await exchange.close()


@asynccontextmanager
async def kraken_venue(post_only_cross: PostOnlyCross = "cancel") -> AsyncIterator[KrakenVenue]:
    with KrakenServer(post_only_cross=post_only_cross) as server:
        venue = KrakenVenue(server)
        try:
            yield venue
        finally:
            await venue.close()
