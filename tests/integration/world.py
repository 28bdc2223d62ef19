"""A session on the paper venue with real Redis and PostgreSQL, for settlement tests and benches.

``World`` opens the real runtime (the same composition root the CLI uses) with a venue of its
own; ``seed_positions`` plays the trading loop: it records filled buys through the store API
and funds the venue with the bought base asset.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from mmops.adapters.paper.catalog import BY_SYMBOL
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.paper.faults import FaultPlan
from mmops.adapters.paper.state import PaperOrder
from mmops.bootstrap import Runtime, Urls, build_settlement, open_runtime
from mmops.config import Settings
from mmops.domain.models import Fill, Order, OrderStatus, Position, Session, Side
from mmops.domain.ratelimit import TradingCounter
from mmops.domain.rounding import round_amount_down
from mmops.ports import Clock, Exchange
from mmops.services.settlement import SettlementService

PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD", "XRP/USD", "ADA/USD", "DOT/USD", "LINK/USD",
         "LTC/USD", "AVAX/USD", "BTC/EUR")  # fmt: skip


@dataclass
class World:
    rt: Runtime
    exchange: PaperExchange
    session_ids: list[str]

    def venue(
        self, counter: TradingCounter | None = None, clock: Clock | None = None, **faults: object
    ) -> PaperExchange:
        """Another handle on the same venue, with injected faults, another trading counter or
        another clock."""
        return PaperExchange(
            self.rt.redis,
            clock or self.rt.clock,
            venue=self.exchange.venue,
            seed=self.rt.settings.paper_seed,
            counter=counter,
            faults=FaultPlan(**faults),  # type: ignore[arg-type]
        )

    def settlement(
        self, exchange: Exchange | None = None, dry_run: bool = False, clock: Clock | None = None
    ) -> SettlementService:
        return build_settlement(self.rt, exchange or self.exchange, dry_run=dry_run, clock=clock)

    async def start_session(self, pairs: Sequence[str], capital: Decimal = Decimal(0)) -> str:
        sid = f"s-{uuid.uuid4().hex[:12]}"
        self.session_ids.append(sid)
        now = self.rt.clock.now()
        await self.rt.registry.start(
            Session(sid, tuple(pairs), now - timedelta(hours=2), capital=capital)
        )
        return sid

    async def seed_positions(
        self,
        sid: str,
        pair: str,
        ages_minutes: Sequence[int],
        notional: Decimal = Decimal(50),
        fund: bool = True,
        below_bid_ticks: int = 5,
        quantity: Decimal | None = None,
    ) -> list[str]:
        """Record one filled buy per age (notional in quote each); return the position ids."""
        market = BY_SYMBOL[pair].market
        ticker = (await self.exchange.tickers([pair]))[pair]
        price = ticker.bid - market.tick * below_bid_ticks
        qty = quantity or max(round_amount_down(notional / price, market.lot), market.min_amount)
        now = self.rt.clock.now()
        ids = []
        for i, age in enumerate(ages_minutes):
            oid = f"b-{pair.replace('/', '')}-{i}-{uuid.uuid4().hex[:6]}"
            at = now - timedelta(minutes=age)
            await self.rt.orders.save(
                Order(sid, oid, pair, Side.BUY, price, qty, at, OrderStatus.FILLED, qty)
            )
            fee = (price * qty * market.maker_fee).quantize(Decimal("0.00000001"))
            await self.rt.fills.record(Fill(sid, oid, pair, Side.BUY, price, qty, fee, at))
            ids.append(oid)
        if fund:
            await self.exchange.fund(market.base, qty * len(ages_minutes))
        return ids

    async def positions(self, sid: str, pair: str) -> list[Position]:
        return (await self.rt.positions.all(sid, pair)).items

    async def take_profit_orders(self, sid: str, pair: str) -> list[tuple[str, str, str]]:
        """(position id, client order id, status) of every sell on the venue that records say
        covers one of the session's positions of ``pair``, in any state."""
        raw = await self.rt.redis.hgetall(self.exchange.keys.orders)
        found = []
        for value in raw.values():
            order = PaperOrder.decode(str(value)).order
            if order.symbol != pair or order.side is not Side.SELL:
                continue
            meta = await self.rt.positions.tp_order(sid, order.id)
            if meta is not None:
                found.append((meta.position, order.client_order_id or "", order.status.value))
        return found


def duplicates(orders: list[tuple[str, str, str]]) -> list[str]:
    """Client order ids that more than one venue order carries."""
    counts = Counter(cid for _, cid, _ in orders)
    return [cid for cid, n in counts.items() if n > 1]


@asynccontextmanager
async def world(redis_url: str, database_url: str, **settings: object) -> AsyncIterator[World]:
    venue = f"w-{uuid.uuid4().hex[:10]}"
    config = Settings(
        redis_url=redis_url,  # type: ignore[arg-type]
        database_url=database_url,  # type: ignore[arg-type]
        paper_venue=venue,
        fill_events_stream=f"events:{venue}",  # this world's own: other tests' fills stay theirs
        **settings,  # type: ignore[arg-type]
    )
    async with open_runtime(config, Urls(redis_url, database_url)) as rt:
        exchange = PaperExchange(rt.redis, rt.clock, venue=venue, seed=config.paper_seed)
        w = World(rt, exchange, [])
        try:
            await exchange.fund("USD", Decimal(1_000_000))
            await exchange.fund("EUR", Decimal(1_000_000))
            yield w
        finally:
            await exchange.reset()
            await rt.redis.delete(config.fill_events_stream)
            from tests.conftest import SessionIds

            ids = SessionIds()
            ids.made = w.session_ids
            await ids.cleanup(rt.redis)
