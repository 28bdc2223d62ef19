"""A worker process for the two-process paper test: places bids, matches, cancels, repeats.

Usage: python -m tests.integration.paper_worker REDIS_URL VENUE WORKER ROUNDS
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.redis.client import create_client
from mmops.domain.exchange import OrderRequest
from mmops.domain.models import Side
from mmops.errors import ExchangeRejected, OrderNotFound

SYMBOLS = ("BTC/USD", "ETH/USD", "BTC/EUR")


async def main(url: str, venue: str, worker: int, rounds: int) -> None:
    redis = create_client(url)
    clock = SimulatedClock(datetime(2026, 11, 1, tzinfo=UTC))
    exchange = PaperExchange(redis, clock, venue=venue, seed=3)
    markets = await exchange.markets()
    for r in range(rounds):
        symbol = SYMBOLS[(r + worker) % len(SYMBOLS)]
        ticker = (await exchange.tickers([symbol]))[symbol]
        tick = markets[symbol].tick
        requests = [
            OrderRequest(
                symbol, Side.BUY, Decimal("0.01"), ticker.bid - tick * (i * 50), str(uuid.uuid4())
            )
            for i in range(3)
        ] + [
            OrderRequest(
                symbol, Side.SELL, Decimal("0.01"), ticker.ask + tick * (i * 50), str(uuid.uuid4())
            )
            for i in range(2)
        ]
        results = await exchange.place_batch(requests)
        clock.advance(timedelta(minutes=7))
        await exchange.match()
        placed = [res.order for res in results if res.order]
        if placed and r % 3 == 0:
            # The order may have filled meanwhile, or been taken by the other process.
            with contextlib.suppress(OrderNotFound, ExchangeRejected):
                await exchange.cancel(symbol, placed[0].id)
    await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
