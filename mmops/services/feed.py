"""The fill feed: the account's executions, as the exchange reports them, recorded once each.

mmops believes the exchange: whatever the trading loop recorded or failed to record, every
execution the venue reports for the account is recorded as a fill of its session (by trade
id, so a replay or an overlap between the stream and the history changes nothing), and a new
buy fill is announced for settlement. The stream is the fast path; the trade history, read
from a persisted cursor, fills its gaps: at start, after every reconnect (and once more
shortly after it, for a trade that fell between the history read and the subscription), and
whenever the stream has been quiet for ``quiet`` seconds.

Attribution (which session an execution belongs to), ``MMOPS_FEED_ATTRIBUTION``:
1. ``order`` (the default): the session that recorded the execution's order
   (``orders:{S}:<pair>``: the market maker's quotes, through the ingest stream or the paper
   loop; mmops's own take-profits and exits), among the recent sessions listing the pair;
2. ``pair``: that, else the one active session listing the pair on this account (for a market
   maker that records no orders; then a manual buy on that pair is the session's too);
3. else it is unattributed, never guessed: it waits (the order's record may be on its way
   through the ingest stream, behind the venue's faster message), is tried again every second
   for ``grace`` seconds, then reported (``feed.unattributed``) and left alone. While any
   execution waits, the persisted cursor does not move past it, so a restart reads it again.
An execution of an order no session recorded (rule 2) gets an order record (fetched from the
venue) so migration can match its fills.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal

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
from mmops.ports import Clock, Exchange, ExecutionFeed, FeedCursors, FillWriter, OrderBook
from mmops.services.sessions import SessionRegistry
from mmops.services.stopping import sleep_or_stop

log = logs.get_logger("mmops.feed")

Attribution = Literal["order", "pair"]
RETRYABLE: tuple[type[MmopsError], ...] = (*RECOVERABLE, StoreUnavailable)
SESSIONS_TTL = 5.0  # seconds the list of recent sessions is trusted for attribution
REFRESH_AFTER = 1.0  # an order no known session recorded reads the list anew, this often
RECHECK_AFTER = 2.0  # seconds after a (re)connect when the history is read once more
RETRY_EVERY = 1.0  # seconds between attempts to attribute a waiting execution
GIVEN_UP_KEPT = 100_000  # ids of executions reported unattributed, remembered (oldest dropped)


@dataclass(slots=True)
class FeedCounts:
    received: int = 0  # executions read (stream and history, overlaps included)
    recorded: int = 0  # new fills recorded
    duplicates: int = 0  # already recorded (a replay, an overlap)
    unattributed: int = 0  # no session could be named
    orders_written: int = 0  # order records created for orders no session had recorded
    history_reads: int = 0
    reconnects: int = 0
    waiting: int = 0  # executions waiting to be attributed now

    def to_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


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
        attribution: Attribution = "order",
        grace: float = 60.0,
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
        self._attribution = attribution
        self._grace = grace
        self._sessions: list[Session] = []
        self._sessions_at = 0.0
        self._waiting: dict[str, tuple[Trade, float]] = {}  # trade id → (trade, first seen)
        self._given_up: dict[str, None] = {}  # reported once; a history re-read skips them
        self.counts = FeedCounts()

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the account until ``stop`` is set: catch up, stream, catch up on every gap.
        Temporary failures back off and retry; StoreUnavailable too (nothing is lost: the
        cursor only moves once what it covers is recorded)."""
        backoff = 1.0
        while not stop.is_set():
            try:
                await self.catch_up()
                backoff = 1.0  # the venue answers: a later drop starts from a short wait
                await self._follow(stop)
            except FeedDisconnected as e:
                self.counts.reconnects += 1
                log.warning("feed.disconnected", error=str(e), retry_in=backoff)
            except RETRYABLE as e:
                log.warning("feed.failed", error=f"{type(e).__name__}: {e}", retry_in=backoff)
            except OperationalError as e:  # the API key refused: say it, keep trying slowly
                log.error("feed.failed", error=f"{type(e).__name__}: {e}", retry_in=backoff)
            if not stop.is_set():
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 30.0)

    async def catch_up(self) -> list[Fill]:
        """Record what the history holds after the persisted cursor; returns the new fills."""
        account = self._feed.account
        cursor = await self._cursors.get(account)
        since = self._clock.now() - timedelta(hours=self._hours_back)
        trades, after = await self._feed.history(cursor, since)
        self.counts.history_reads += 1
        recorded = await self.record(trades)
        if not self._waiting:  # only past what is recorded (or given up on)
            await self._cursors.set(account, after)
        if recorded:
            log.info("feed.caught_up", recorded=len(recorded), read=len(trades))
        return recorded

    async def _follow(self, stop: asyncio.Event) -> None:
        """Stream until stop, a drop (FeedDisconnected) or an error. Read the history once
        more when the stream says it is live (an empty batch), else shortly after connecting,
        and then every ``quiet`` seconds whatever the stream does (it moves the cursor, so a
        reconnect reads little); try waiting executions again every second.

        The stream's next batch is awaited as one task across those history reads: cancelling
        a pending ``anext`` would close the stream's generator."""
        stream = self._feed.stream()
        recheck_at = time.monotonic() + RECHECK_AFTER
        poll_at = time.monotonic() + self._quiet
        pending: asyncio.Future[list[Trade]] | None = None
        try:
            while not stop.is_set():
                if pending is None:
                    pending = asyncio.ensure_future(anext(stream))
                retry_at = time.monotonic() + RETRY_EVERY if self._waiting else float("inf")
                timeout = max(0.05, min(recheck_at, poll_at, retry_at) - time.monotonic())
                stopping: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
                waited: set[asyncio.Future[Any]] = {pending, stopping}
                done, _ = await asyncio.wait(
                    waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                stopping.cancel()
                if stop.is_set():
                    break
                if pending not in done:
                    if time.monotonic() >= min(recheck_at, poll_at):
                        await self.catch_up()
                        recheck_at, poll_at = float("inf"), time.monotonic() + self._quiet
                    else:
                        await self.retry_waiting()
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
                await self.record(batch)
        finally:
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
            with contextlib.suppress(Exception):
                await stream.aclose()  # type: ignore[attr-defined]

    async def record(self, trades: Sequence[Trade]) -> list[Fill]:
        """Record executions as fills of their sessions; returns the new ones. One no session
        can be named yet waits (see the module docstring)."""
        new: list[Fill] = []
        for trade in trades:
            self.counts.received += 1
            if (fill := await self._record_one(trade)) is not None:
                new.append(fill)
        return new

    async def retry_waiting(self) -> list[Fill]:
        """Try the waiting executions again; report and drop those waiting past ``grace``."""
        new: list[Fill] = []
        now = time.monotonic()
        for trade_id, (trade, first_seen) in list(self._waiting.items()):
            if (fill := await self._record_one(trade)) is not None:
                new.append(fill)
            elif trade_id in self._waiting and now - first_seen >= self._grace:
                del self._waiting[trade_id]
                self._given_up[trade_id] = None
                while len(self._given_up) > GIVEN_UP_KEPT:
                    del self._given_up[next(iter(self._given_up))]
                self.counts.unattributed += 1
                log.warning("feed.unattributed", trade=trade.id, order=trade.order_id,
                            pair=trade.symbol, side=trade.side.value,
                            rule=self._attribution)  # fmt: skip
        self.counts.waiting = len(self._waiting)
        return new

    async def _record_one(self, trade: Trade) -> Fill | None:
        if trade.id in self._given_up:
            return None
        session = await self._attribute(trade)
        if session is None:
            self._waiting.setdefault(trade.id, (trade, time.monotonic()))
            self.counts.waiting = len(self._waiting)
            return None
        self._waiting.pop(trade.id, None)
        self.counts.waiting = len(self._waiting)
        fill = Fill(session.id, trade.order_id, trade.symbol, trade.side, trade.price,
                    trade.amount, trade.fee, trade.timestamp, trade_id=trade.id)  # fmt: skip
        new = await self._fills.record(fill)
        # Also for a replay: a record of the order may be what an earlier attempt missed.
        await self._order_known(session, trade)
        if not new:
            self.counts.duplicates += 1
            return None
        self.counts.recorded += 1
        return fill

    async def _attribute(self, trade: Trade) -> Session | None:
        found = await self._by_order(trade, await self._recent())
        if found is None and time.monotonic() - self._sessions_at > REFRESH_AFTER:
            found = await self._by_order(trade, await self._recent(fresh=True))
        if found is not None or self._attribution != "pair":
            return found
        active = [
            s for s in self._sessions
            if trade.symbol in s.pairs and s.status is not SessionStatus.ENDED
        ]  # fmt: skip
        return active[0] if len(active) == 1 else None

    async def _by_order(self, trade: Trade, sessions: list[Session]) -> Session | None:
        for s in sessions:
            if trade.symbol in s.pairs and await self._orders.get(
                s.id, trade.symbol, trade.order_id
            ):
                return s
        return None

    async def _recent(self, fresh: bool = False) -> list[Session]:
        if fresh or time.monotonic() - self._sessions_at > SESSIONS_TTL:
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
