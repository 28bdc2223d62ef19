"""The paper trading loop: a small multi-pair market maker on the paper venue.

It produces the data everything else in mmops works on. Each step it lets the venue match
resting orders up to the clock's time, records the venue's quotes at the times it matched on
(the session's fill path, ``path:{S}``, which the tier backtest replays), records the account's
executions as fills through the store API (sometimes twice, as a real feed replays executions
after a reconnect), and keeps a ladder of post-only bids below the mid on each pair. It obeys
the session's status: once the stop-loss halts the session it cancels its bids and buys
nothing more.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from decimal import Decimal

from mmops import logs
from mmops.domain.exchange import OrderRequest, Trade
from mmops.domain.ids import client_order_id
from mmops.domain.models import (
    Fill,
    Market,
    Order,
    OrderStatus,
    Session,
    SessionStatus,
    Side,
)
from mmops.domain.rounding import round_amount_down, round_price_down
from mmops.errors import MmopsError
from mmops.ports import (
    Clock,
    FillWriter,
    LiveSessions,
    Orders,
    OrderWriter,
    PathRecorder,
    SessionLifecycle,
    Venue,
    cancel_or_fetch,
)

log = logs.get_logger("mmops.sim")


@dataclass(frozen=True, slots=True)
class LoopConfig:
    pairs: tuple[str, ...]
    levels: int = 3  # bids per pair
    spacing: Decimal = Decimal("0.0025")  # distance between ladder levels, fraction of mid
    notional: Decimal = Decimal("150")  # quote currency per bid
    capital: Decimal = Decimal("50000")  # per quote currency funded on the venue
    recenter: Decimal = Decimal("0.01")  # re-place the ladder when the mid moved this much
    duplicate_rate: float = 0.05  # share of executions recorded twice
    seed: int = 7
    # False: the loop keeps its own books but records no fill; mmops's fill feed records the
    # venue's executions instead (the live path: the demo and `sim` run it).
    record_fills: bool = True


@dataclass(slots=True)
class LoopStats:
    fills: int = 0
    duplicates_recorded: int = 0
    bids_placed: int = 0
    bids_rejected: int = 0
    halted: bool = False


@dataclass(slots=True)
class _Ladder:
    anchor: Decimal = Decimal(0)  # the mid the ladder was placed around
    bids: dict[str, Order] = field(default_factory=dict)  # open bids by order id


class TradingLoop:
    def __init__(
        self,
        venue: Venue,
        registry: SessionLifecycle,
        live: LiveSessions,
        orders: OrderWriter,
        order_reader: Orders | None,
        fills: FillWriter,
        clock: Clock,
        config: LoopConfig,
        session_id: str,
        path: PathRecorder | None = None,
    ) -> None:
        self._venue = venue
        self._registry = registry
        self._live = live
        self._orders = orders
        self._order_reader = order_reader
        self._fills = fills
        self._clock = clock
        self.config = config
        self.session_id = session_id
        self.stats = LoopStats()
        self._rng = random.Random(config.seed)  # noqa: S311 - simulation, not crypto
        self._ladders = {pair: _Ladder() for pair in config.pairs}
        self._markets: dict[str, Market] = {}
        self._cursor = 0
        self._bid_number = 0
        self._path = path
        self._path_cursor: str | None = None  # the venue's fill path recorded up to here

    async def start(self) -> Session:
        """Register the session (Redis and PostgreSQL) and start the venue's match clock."""
        self._markets = await self._venue.markets()
        missing = [p for p in self.config.pairs if p not in self._markets]
        if missing:
            raise ValueError(f"the venue does not list {missing}")
        _, self._cursor = await self._venue.trades(0)
        if self._path is not None:
            self._path_cursor = await self._venue.path_cursor()
        await self._match()
        session = Session(
            self.session_id,
            self.config.pairs,
            self._clock.now(),
            capital=self.config.capital,
            mode="paper",
            exchange="paper",
        )
        return await self._registry.start(session)

    async def step(self) -> None:
        """Match up to now, record executions, then quote (unless halted)."""
        await self._match()
        await self._record_trades()
        session = await self._live.get(self.session_id)
        if session is not None and session.status is SessionStatus.HALTED:
            if not self.stats.halted:
                log.warning("sim.halted", session=self.session_id)
                await self._cancel_all()
            self.stats.halted = True
            return
        tickers = await self._venue.tickers(list(self.config.pairs))
        for pair in self.config.pairs:
            await self._quote(pair, (tickers[pair].bid + tickers[pair].ask) / 2)

    async def end(self) -> None:
        """Cancel the ladder, record what filled meanwhile, and end the session."""
        await self._match()
        await self._record_trades()
        await self._cancel_all()
        await self._registry.end(self.session_id, self._clock.now())

    async def _match(self) -> None:
        """Let the venue match up to now, then record the quotes of the session's pairs at
        every time it matched on since the last record, whoever made it match (a venue may be
        shared). The path is a side line: a failure to record it is logged, trading goes on,
        and the next step records what this one could not."""
        await self._venue.match(self._clock.now())
        if self._path is None or self._path_cursor is None:
            return
        try:
            steps, cursor = await self._venue.fill_path(self.config.pairs, self._path_cursor)
            await self._path.record_path(self.session_id, steps)
        except MmopsError as e:
            log.warning(
                "sim.path_failed", session=self.session_id, error=f"{type(e).__name__}: {e}"
            )
            return
        self._path_cursor = cursor

    # -- executions -----------------------------------------------------------------------

    async def _record_trades(self) -> None:
        trades, self._cursor = await self._venue.trades(self._cursor)
        for t in trades:
            order = await self._order_of(t.symbol, t.order_id)
            if order is None:
                continue  # another session's order on a shared venue: not ours to record
            self.stats.fills += 1
            if self.config.record_fills:
                await self._record_fill(t)
            filled = order.filled + t.amount
            status = OrderStatus.FILLED if filled >= order.amount else order.status
            updated = replace(order, filled=filled, status=status)
            await self._orders.save(updated)
            ladder = self._ladders[t.symbol]
            if t.order_id in ladder.bids:
                if status is OrderStatus.FILLED:
                    del ladder.bids[t.order_id]
                else:
                    ladder.bids[t.order_id] = updated

    async def _record_fill(self, t: Trade) -> None:
        fill = Fill(self.session_id, t.order_id, t.symbol, t.side, t.price, t.amount,
                    t.fee, t.timestamp, trade_id=t.id)  # fmt: skip
        await self._fills.record(fill)
        if self._rng.random() < self.config.duplicate_rate:
            await self._fills.record(fill)  # a replayed execution: the store keeps one
            self.stats.duplicates_recorded += 1

    async def _order_of(self, symbol: str, order_id: str) -> Order | None:
        bid = self._ladders[symbol].bids.get(order_id) if symbol in self._ladders else None
        if bid is not None or self._order_reader is None:
            return bid
        return await self._order_reader.get(self.session_id, symbol, order_id)

    # -- quoting --------------------------------------------------------------------------

    async def _quote(self, pair: str, mid: Decimal) -> None:
        ladder = self._ladders[pair]
        if ladder.anchor and abs(mid - ladder.anchor) / ladder.anchor > self.config.recenter:
            await self._cancel_pair(pair)
        if not ladder.bids:
            ladder.anchor = mid
        wanted = self.config.levels - len(ladder.bids)
        if wanted <= 0:
            return
        market = self._markets[pair]
        taken = {o.price for o in ladder.bids.values()}
        requests: list[OrderRequest] = []
        for level in range(1, self.config.levels + 1):
            price = round_price_down(ladder.anchor * (1 - self.config.spacing * level), market.tick)
            amount = round_amount_down(self.config.notional / price, market.lot)
            if price in taken or amount < market.min_amount or len(requests) >= wanted:
                continue
            self._bid_number += 1
            cid = client_order_id(self.session_id, f"bid-{self._bid_number}", 0)
            requests.append(OrderRequest(pair, Side.BUY, amount, price, cid))
        await self._place(pair, requests)

    async def _place(self, pair: str, requests: list[OrderRequest]) -> None:
        if not requests:
            return
        try:
            results = await self._venue.place_batch(requests)
        except MmopsError as e:
            log.warning("sim.quote_failed", pair=pair, error=str(e))
            return
        for r in results:
            if r.order is None or r.order.status is not OrderStatus.OPEN:
                # Refused, or accepted and cancelled by the engine (a post-only bid that would
                # have crossed): either way nothing rests on the book.
                self.stats.bids_rejected += 1
                continue
            o = r.order
            order = Order(self.session_id, o.id, pair, Side.BUY, o.price, o.amount, o.created_at,
                          client_order_id=o.client_order_id)  # fmt: skip
            await self._orders.save(order)
            self._ladders[pair].bids[o.id] = order
            self.stats.bids_placed += 1

    async def _cancel_pair(self, pair: str) -> None:
        ladder = self._ladders[pair]
        for order_id, order in list(ladder.bids.items()):
            try:
                canceled = await cancel_or_fetch(self._venue, pair, order_id)
            except MmopsError as e:
                log.warning("sim.cancel_failed", pair=pair, order=order_id, error=str(e))
                continue
            if canceled.status is OrderStatus.CANCELED:
                await self._orders.save(replace(order, status=OrderStatus.CANCELED))
            del ladder.bids[order_id]
        ladder.anchor = Decimal(0)

    async def _cancel_all(self) -> None:
        for pair in self.config.pairs:
            await self._cancel_pair(pair)
