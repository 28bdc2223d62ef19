"""A trading desk in memory for service unit tests: the services built with their real
constructors on the fakes of ``tests/fakes.py``, three pairs (two sell BTC) and a clock that
moves only when told. No I/O: a test runs in milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mmops.adapters.clock import SimulatedClock
from mmops.domain.ids import client_order_id
from mmops.domain.models import Fill, Market, PendingTakeProfit, Position, Session, Side, Ticker
from mmops.domain.pnl import StopLossThresholds
from mmops.domain.records import Fence
from mmops.domain.tiers import TierPolicy
from mmops.services.reprice import Repricer
from mmops.services.sessions import SessionRegistry
from mmops.services.settlement import SettlementService
from mmops.services.stoploss import StopLossService
from mmops.services.take_profit import TakeProfitService
from mmops.services.tp_results import MarketData
from tests import fakes

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
BTC_USD, BTC_EUR, ETH_USD = "BTC/USD", "BTC/EUR", "ETH/USD"


def market(symbol: str) -> Market:
    base, quote = symbol.split("/")
    return Market(
        symbol=symbol,
        base=base,
        quote=quote,
        tick=Decimal("0.1"),
        lot=Decimal("0.0001"),
        min_amount=Decimal("0.001"),
        min_cost=Decimal("0.05"),
        maker_fee=Decimal("0.0025"),
        taker_fee=Decimal("0.004"),
    )


def ticker(symbol: str, bid: str, ask: str | None = None) -> Ticker:
    ask = ask or str(Decimal(bid) + Decimal("0.1"))
    return Ticker(symbol, Decimal(bid), Decimal(ask), T0)


class Desk:
    def __init__(
        self,
        *,
        balances: dict[str, str] | None = None,
        dry_run: bool = False,
        venue: type[fakes.MemoryExchange] = fakes.MemoryExchange,
        group_pairs: int = 0,
    ) -> None:
        self.clock = SimulatedClock(T0)
        self.claims = fakes.FakeClaims(self.clock)
        self.locks = fakes.FakeLocks()
        self.store = fakes.MemoryStore(self.claims, self.locks)
        self.ops = fakes.FakeOps()
        self.runs = fakes.FakeRuns()
        self.live = fakes.FakeLiveSessions()
        self.records = fakes.FakeSessionRecords()
        self.notifier = fakes.FakeNotifier()
        self.registry = SessionRegistry(live=self.live, records=self.records)
        self.exchange = venue(
            self.clock,
            {s: market(s) for s in (BTC_USD, BTC_EUR, ETH_USD)},
            {
                BTC_USD: ticker(BTC_USD, "100"),
                BTC_EUR: ticker(BTC_EUR, "90"),
                ETH_USD: ticker(ETH_USD, "10"),
            },
            {asset: Decimal(v) for asset, v in (balances or {"BTC": "10", "ETH": "10"}).items()},
        )
        tiers = TierPolicy()
        self.take_profits = TakeProfitService(
            positions=self.store,
            attempts=self.claims,
            exchange=self.exchange,
            tiers=tiers,
            clock=self.clock,
            dry_run=dry_run,
        )
        self.repricer = Repricer(
            positions=self.store, exchange=self.exchange, tiers=tiers, clock=self.clock
        )
        self.stoploss = StopLossService(
            fills=self.store,
            positions=self.store,
            records=self.ops,
            registry=self.registry,
            exchange=self.exchange,
            notifier=self.notifier,
            thresholds=StopLossThresholds(Decimal("0.05"), Decimal("0.10"), Decimal("0.15")),
            dry_run=dry_run,
            orders=self.store,
        )
        self.settlement = SettlementService(
            registry=self.registry,
            positions=self.store,
            records=self.ops,
            runs=self.runs,
            locks=self.locks,
            exchange=self.exchange,
            take_profits=self.take_profits,
            stoploss=self.stoploss,
            repricer=self.repricer,
            clock=self.clock,
            hours_back=24,
            session_limit=10,
            worker="w-test",
            group_pairs=group_pairs,
        )

    async def start(self, sid: str = "s1", *pairs: str, capital: str = "0") -> Session:
        session = Session(sid, pairs or (BTC_USD,), T0, capital=Decimal(capital))
        return await self.registry.start(session)

    async def buy(
        self,
        position_id: str,
        qty: str,
        *,
        pair: str = BTC_USD,
        price: str = "100",
        minutes: int = 0,
        sid: str = "s1",
    ) -> None:
        """Record a buy fill of ``qty`` at ``price``, ``minutes`` after T0 (no fee)."""
        fill = Fill(
            session_id=sid,
            order_id=position_id,
            symbol=pair,
            side=Side.BUY,
            price=Decimal(price),
            quantity=Decimal(qty),
            fee=Decimal(0),
            timestamp=T0 + timedelta(minutes=minutes),
        )
        await self.store.record(fill)

    def at(self, minutes: int) -> None:
        """Move the clock to ``minutes`` after T0."""
        self.clock.advance(T0 + timedelta(minutes=minutes) - self.clock.now())

    def set_bid(self, symbol: str, bid: str) -> None:
        self.exchange.tickers_by_symbol[symbol] = ticker(symbol, bid)

    async def data(self) -> MarketData:
        ex = self.exchange
        return MarketData(await ex.markets(), dict(ex.tickers_by_symbol), await ex.balances())

    async def uncovered(self, pair: str = BTC_USD, sid: str = "s1") -> dict[str, list[Position]]:
        return {pair: (await self.store.uncovered(sid, pair)).items}

    async def position(self, position_id: str, sid: str = "s1") -> Position:
        [p] = (await self.store.read_many(sid, [position_id])).items
        return p

    async def mark_pending(
        self, position_id: str, amount: str, deadline: datetime | None = None, sid: str = "s1"
    ) -> PendingTakeProfit:
        """What a worker that died (or paused) after fencing leaves: a marker for the
        position's current generation, fenced through the claim like any order."""
        p = await self.position(position_id, sid)
        marker = PendingTakeProfit(p.generation, cid(position_id, p.generation, sid),
                                   Decimal(amount), deadline)  # fmt: skip
        tokens = await self.claims.acquire(sid, [position_id])
        try:
            fenced = await self.store.fence(sid, None, [Fence(p, marker, tokens[position_id])])
        finally:
            await self.claims.release(sid, tokens)
        assert fenced == {position_id}
        return marker


def cid(position_id: str, generation: int = 0, sid: str = "s1") -> str:
    return client_order_id(sid, position_id, generation)
