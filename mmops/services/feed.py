"""The fill feed: the account's executions, as the exchange reports them, recorded once each.

mmops believes the exchange: whatever the trading loop recorded or failed to record, every
execution the venue reports for the account is recorded as a fill of its session (by trade
id, so a replay or an overlap between the stream and the history changes nothing), and a new
buy fill is announced for settlement. The stream is the fast path; the trade history, read
from a persisted cursor, fills its gaps: at start, after every reconnect (and once more
shortly after it, for a trade that fell between the history read and the subscription), and
whenever the stream has been quiet for ``quiet`` seconds.

Attribution (which session an execution belongs to), in this order:
1. the session that recorded the execution's order (``orders:{S}:<pair>``: the trading
   loop's quotes, mmops's own take-profits and exits), among the recent sessions listing the
   pair;
2. else the one active session listing the pair on this account;
3. else (no such session, or several) it is unattributed: logged and counted, never guessed.
An execution of an order no session recorded gets an order record (fetched from the venue)
so migration can match its fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Protocol

from mmops import logs
from mmops.domain.exchange import ExchangeOrder, Trade
from mmops.domain.models import Fill, Order, OrderKind, OrderStatus, Session, SessionStatus
from mmops.errors import (
    RECOVERABLE,
    FeedDisconnected,
    MmopsError,
    OperationalError,
    StoreUnavailable,
)
from mmops.ports import Clock, Exchange, ExecutionFeed, FeedCursors, FillWriter, Orders, OrderWriter
from mmops.services.sessions import SessionRegistry

log = logs.get_logger("mmops.feed")

RETRYABLE: tuple[type[MmopsError], ...] = (*RECOVERABLE, StoreUnavailable)
SESSIONS_TTL = 5.0  # seconds the list of recent sessions is trusted for attribution
RECHECK_AFTER = 2.0  # seconds after a (re)connect when the history is read once more


@dataclass(slots=True)
class FeedCounts:
    received: int = 0  # executions read (stream and history, overlaps included)
    recorded: int = 0  # new fills recorded
    duplicates: int = 0  # already recorded (a replay, an overlap)
    unattributed: int = 0  # no session could be named
    orders_written: int = 0  # order records created for orders no session had recorded
    history_reads: int = 0
    reconnects: int = 0

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class OrderBook(Orders, OrderWriter, Protocol):
    """Recorded orders, read and written (``OrderStore``)."""


class FeedService:
    def __init__(
        self,
        feed: ExecutionFeed,
        cursors: FeedCursors,
        registry: SessionRegistry,
        orders: OrderBook,
        fills: FillWriter,
        exchange: Exchange,
        clock: Clock,
        *,
        hours_back: int,
        session_limit: int,
        quiet: float = 60.0,
    ) -> None:
        self._feed = feed
        self._cursors = cursors
        self._registry = registry
        self._orders = orders
        self._fills = fills
        self._exchange = exchange
        self._clock = clock
        self._hours_back = hours_back
        self._limit = session_limit
        self._quiet = quiet
        self._sessions: list[Session] = []
        self._sessions_at = 0.0
        self.counts = FeedCounts()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the account until ``stop`` is set: catch up, stream, catch up on every gap.
        Temporary failures back off and retry; StoreUnavailable too (nothing is lost: the
        cursor only moves once what it covers is recorded)."""
        backoff = 1.0
        while not stop.is_set():
            try:
                await self.catch_up()
                await self._follow(stop)
                backoff = 1.0
            except FeedDisconnected as e:
                self.counts.reconnects += 1
                log.warning("feed.disconnected", error=str(e), retry_in=backoff)
            except RETRYABLE as e:
                log.warning("feed.failed", error=f"{type(e).__name__}: {e}", retry_in=backoff)
            except OperationalError as e:  # the API key refused: say it, keep trying slowly
                log.error("feed.failed", error=f"{type(e).__name__}: {e}", retry_in=backoff)
            if not stop.is_set():
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 30.0)

    async def catch_up(self) -> list[Fill]:
        """Record what the history holds after the persisted cursor; returns the new fills."""
        account = self._feed.account
        cursor = await self._cursors.get(account)
        since = self._clock.now() - timedelta(hours=self._hours_back)
        trades, after = await self._feed.history(cursor, since)
        self.counts.history_reads += 1
        recorded = await self.record(trades)
        await self._cursors.set(account, after)  # only once everything before it is recorded
        if recorded:
            log.info("feed.caught_up", recorded=len(recorded), read=len(trades))
        return recorded

    async def _follow(self, stop: asyncio.Event) -> None:
        """Stream until stop, a drop (FeedDisconnected) or an error; read the history once
        more when the stream says it is live (an empty batch), else shortly after connecting,
        and whenever the stream has been quiet for ``quiet``.

        The stream's next batch is awaited as one task across those history reads: cancelling
        a pending ``anext`` would close the stream's generator."""
        stream = self._feed.stream()
        recheck_at = time.monotonic() + RECHECK_AFTER
        last_heard = time.monotonic()
        pending: asyncio.Future[list[Trade]] | None = None
        try:
            while not stop.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(anext(stream))
                timeout = max(0.05, min(recheck_at, last_heard + self._quiet) - time.monotonic())
                stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
                waited: set[asyncio.Future[Any]] = {pending, stopping}
                done, _ = await asyncio.wait(
                    waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                stopping.cancel()
                if stop.is_set():
                    break
                if pending not in done:
                    await self.catch_up()
                    recheck_at = float("inf")
                    last_heard = time.monotonic()
                    continue
                try:
                    batch = pending.result()
                except StopAsyncIteration:
                    raise FeedDisconnected("the execution stream ended") from None
                finally:
                    pending = None
                if not batch:  # the venue says the subscription is live: close the gap now
                    await self.catch_up()
                    recheck_at = float("inf")
                    continue
                last_heard = time.monotonic()
                await self.record(batch)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    async def record(self, trades: Sequence[Trade]) -> list[Fill]:
        """Record executions as fills of their sessions; returns the new ones."""
        new: list[Fill] = []
        for trade in trades:
            self.counts.received += 1
            session = await self._attribute(trade)
            if session is None:
                self.counts.unattributed += 1
                log.warning("feed.unattributed", trade=trade.id, order=trade.order_id,
                            pair=trade.symbol, side=trade.side.value)  # fmt: skip
                continue
            fill = Fill(session.id, trade.order_id, trade.symbol, trade.side, trade.price,
                        trade.amount, trade.fee, trade.timestamp, trade_id=trade.id)  # fmt: skip
            if not await self._fills.record(fill):
                self.counts.duplicates += 1
                continue
            new.append(fill)
            self.counts.recorded += 1
            await self._order_known(session, trade)
        return new

    async def _attribute(self, trade: Trade) -> Session | None:
        sessions = [s for s in await self._recent() if trade.symbol in s.pairs]
        for s in sessions:
            if await self._orders.get(s.id, trade.symbol, trade.order_id) is not None:
                return s
        active = [s for s in sessions if s.status is not SessionStatus.ENDED]
        if len(active) == 1:
            return active[0]
        return None

    async def _recent(self) -> list[Session]:
        if time.monotonic() - self._sessions_at > SESSIONS_TTL:
            self._sessions = await self._registry.recent_sessions(
                self._hours_back, self._limit, self._clock.now()
            )
            self._sessions_at = time.monotonic()
        return self._sessions

    async def _order_known(self, session: Session, trade: Trade) -> None:
        """Give the fill's order a record if its session has none (fetched from the venue,
        else what the fill says), so migration can match the fill to it."""
        if await self._orders.get(session.id, trade.symbol, trade.order_id) is not None:
            return
        order = _order_from_trade(session.id, trade)
        try:
            found = await self._exchange.fetch_order(trade.symbol, trade.order_id)
        except RECOVERABLE as e:
            log.info("feed.order_lookup_failed", order=trade.order_id, error=str(e))
        else:
            order = _order_from_exchange(session.id, found, order)
        await self._orders.save(order)
        self.counts.orders_written += 1


def _order_from_trade(session_id: str, t: Trade) -> Order:
    return Order(session_id, t.order_id, t.symbol, t.side, t.price, t.amount, t.timestamp,
                 status=OrderStatus.FILLED, filled=t.amount, kind=OrderKind.ENTRY,
                 client_order_id=t.client_order_id)  # fmt: skip


def _order_from_exchange(session_id: str, o: ExchangeOrder, fallback: Order) -> Order:
    return replace(
        fallback,
        price=o.price,
        amount=max(o.amount, fallback.filled),
        filled=max(o.filled, fallback.filled),
        status=o.status,
        created_at=o.created_at,
        client_order_id=o.client_order_id or fallback.client_order_id,
    )


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
