"""Many handles of one paper venue changing one balance at once, each on its own connection:
what the venue's compare-and-set must get through without losing an update or giving up."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from decimal import Decimal

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.redis.client import create_client


async def fund_at_once(redis_url: str, handles: int, times: int) -> Decimal:
    """``handles`` handles (clients) of a new venue each fund USD by 1, ``times`` times, all at
    once; return the USD total the venue then holds (the venue is deleted after)."""
    clients = [create_client(redis_url) for _ in range(handles)]
    name = f"race-{uuid.uuid4().hex[:8]}"
    clock = SimulatedClock(datetime(2026, 11, 1, tzinfo=UTC))
    venues = [PaperExchange(c, clock, venue=name) for c in clients]

    async def fund(venue: PaperExchange) -> None:
        for _ in range(times):
            await venue.fund("USD", Decimal(1))

    try:
        await asyncio.gather(*[fund(v) for v in venues])
        return (await venues[0].balances())["USD"].total
    finally:
        await venues[0].reset()
        for c in clients:
            await c.aclose()
