"""The ports services depend on: short ``typing.Protocol``s, each with a real implementation
in ``mmops.adapters`` (and, for the exchange, a paper one beside the live one)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from mmops.domain.allocation import ReservationAnswer, ReservationRequest
from mmops.domain.exchange import ExchangeOrder, OrderRequest, PlacementResult, Trade
from mmops.domain.models import (
    Balance,
    Fill,
    Market,
    Order,
    Position,
    Session,
    SessionStatus,
    Ticker,
)
from mmops.domain.records import (
    AnalyticsCopy,
    Coverage,
    Fence,
    FillEvent,
    FillMove,
    MigrationCounts,
    OrderMove,
    PriceSeries,
    ReadResult,
    Reject,
    SessionLease,
    SettlementRun,
    SettlementStatus,
    Stray,
    TakeProfitRecord,
    TpStatus,
    WorkItem,
    WorkKind,
)
from mmops.errors import OrderNotFound


class Clock(Protocol):
    """Where services read the time; the simulator passes a simulated one."""

    def now(self) -> datetime: ...


class LiveSessions(Protocol):
    """The live state of sessions (Redis)."""

    async def save(self, s: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def set_status(self, session_id: str, status: SessionStatus) -> None: ...
    async def end(self, session_id: str, ended_at: datetime) -> None: ...
    async def expire_all(self, session_id: str, seconds: int) -> int: ...


class SessionRecords(Protocol):
    """The registry of sessions (PostgreSQL), which settlement and migration discover from."""

    async def upsert(self, s: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def set_status(
        self, session_id: str, status: SessionStatus, ended_at: datetime | None = None
    ) -> None: ...
    async def recent(self, hours_back: int, limit: int, now: datetime) -> list[Session]: ...


class Exchange(Protocol):
    """A venue: markets, tickers, balances, batch placement, cancel and look-ups.

    Implementations map their library's errors into ``mmops.errors`` (temporary, rejected,
    operational) once, at their boundary. All amounts are ``Decimal``.
    """

    name: str

    async def markets(self) -> dict[str, Market]:
        """Trading rules of every pair the venue lists (cached by live adapters)."""
        ...

    async def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]: ...

    async def balances(self) -> dict[str, Balance]:
        """Per asset: free, used (held by open orders) and total. Never cached."""
        ...

    async def admit(self, symbol: str, orders: int) -> None:
        """Wait until the venue's trading counter for ``symbol`` can take ``orders`` more
        orders without refusing them (at once where the venue keeps no such model).

        A caller stamps an order's deadline after this wait, not before it, so the wait cannot
        eat the deadline. What the wait reserves is spent by the next ``place_batch`` of the
        pair, which then does not wait again. Raises nothing.
        """
        ...

    async def place_batch(self, orders: Sequence[OrderRequest]) -> list[PlacementResult]:
        """Place up to MAX_BATCH orders of one pair; one result per order, in order.

        An order whose ``deadline`` has passed when the request reaches the venue (or lies
        outside Kraken's deadline window) is refused with DeadlineRefused: nothing is placed.
        Raises ValueError for a batch of mixed pairs or over MAX_BATCH; every per-order
        failure (including a timeout) is in its result, never raised.
        """
        ...

    async def cancel(self, symbol: str, order_id: str) -> ExchangeOrder:
        """Cancel an open order and return it as the venue now shows it: CANCELED, or still
        OPEN when the venue answered the cancel ``pending`` (Kraken's CancelOrder): such an
        order still holds its quantity and may fill until a later look shows it cancelled.
        Raises OrderNotFound if the venue has no such open order."""
        ...

    async def amend(self, symbol: str, order_id: str, price: Decimal) -> ExchangeOrder:
        """Move an open order to ``price`` in place (same id and client id; Kraken's
        AmendOrder) and return it as it now stands. Raises OrderNotFound if it is not open,
        PostOnlyWouldTake if a post-only order would cross at ``price``, ExchangeRejected if
        the venue cannot amend (the caller cancels and replaces instead)."""
        ...

    async def fetch_order(self, symbol: str, order_id: str) -> ExchangeOrder:
        """An order in any state; raises OrderNotFound."""
        ...

    async def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]: ...

    async def fetch_orders(self, order_ids: Sequence[str]) -> dict[str, ExchangeOrder]:
        """Orders of any pair and state by id, as many per call as the venue takes (Kraken's
        QueryOrders: 50 txids). An id the venue does not know is absent from the answer,
        never an error; raises what a look-up raises (TemporaryError when it cannot answer)."""
        ...

    async def order_trades(self, symbol: str, order_id: str) -> list[Trade]:
        """The executions of one order, oldest first, with the trade ids the venue's fill
        feed reports (so recording them twice is harmless). Raises OrderNotFound."""
        ...

    async def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        """The open order placed with this client order id, else the most recently created
        closed one, or None (Kraken keeps a ``cl_ord_id`` unique among open orders only)."""
        ...

    async def close(self) -> None: ...


async def cancel_or_fetch(exchange: Exchange, symbol: str, order_id: str) -> ExchangeOrder:
    """Cancel an order and return it as the venue left it; if the venue no longer has it open
    (``OrderNotFound``: it filled, or was cancelled or expired meanwhile), fetch it instead.
    An OPEN answer is a pending cancel: the order is not released yet.

    Raises what ``cancel`` raises (but ``OrderNotFound``) and what ``fetch_order`` raises.
    """
    try:
        return await exchange.cancel(symbol, order_id)
    except OrderNotFound:
        return await exchange.fetch_order(symbol, order_id)


class Positions(Protocol):
    """Positions and their take-profit coverage (Redis)."""

    async def uncovered(
        self, session_id: str, symbol: str, limit: int = -1
    ) -> ReadResult[Position]: ...
    async def all(self, session_id: str, symbol: str) -> ReadResult[Position]: ...
    async def read_many(self, session_id: str, ids: Sequence[str]) -> ReadResult[Position]: ...
    async def fence(
        self, session_id: str, lease: SessionLease | None, marks: Sequence[Fence]
    ) -> set[str]: ...
    async def clear_pending(self, marks: Sequence[tuple[Position, int]]) -> None: ...
    async def record_coverage(self, coverages: Sequence[Coverage]) -> None: ...
    async def release_coverage(
        self, position: Position, order_id: str, status: TpStatus, kept: Decimal = ...
    ) -> None: ...
    async def tp_order(self, session_id: str, order_id: str) -> TakeProfitRecord | None: ...
    async def tp_orders(
        self, session_id: str, order_ids: Sequence[str]
    ) -> ReadResult[tuple[str, TakeProfitRecord]]: ...
    async def record_exit(self, position: Position, order_id: str, amount: Decimal) -> None: ...
    async def set_tp_status(self, session_id: str, order_id: str, status: TpStatus) -> None: ...
    async def amend_tp(
        self, session_id: str, order_id: str, price: Decimal, tier: int, markup: Decimal
    ) -> None: ...


class BalanceReservations(Protocol):
    """One account's ledger of free balance reserved by workers (``docs/SETTLEMENT.md``).

    ``reserve`` is atomic against every other worker's calls on the account: all or nothing.
    ``placed`` keeps a reservation as the amount its orders may now hold (0 drops it);
    ``release`` drops it. Both are no-ops for an unknown or expired reservation. Raises
    StoreUnavailable when the store is down.
    """

    async def reserve(self, request: ReservationRequest) -> ReservationAnswer: ...

    async def placed(
        self, account: str, reservation_id: str, amount: Decimal, at: datetime, ttl: timedelta
    ) -> None: ...

    async def release(self, account: str, reservation_id: str) -> None: ...


class TakeProfitClaims(Protocol):
    """Short-lived per-position claims: "I am placing this position's take-profit"."""

    async def acquire(self, session_id: str, position_ids: Sequence[str]) -> dict[str, str]: ...
    async def acquire_reading(
        self, session_id: str, position_ids: Sequence[str]
    ) -> tuple[dict[str, str], ReadResult[Position]]:
        """Claim and read the positions in the same atomic step: the tokens of those
        claimed, and what they hold as of the claim."""
        ...

    async def release(self, session_id: str, tokens: dict[str, str]) -> None: ...


class Fills(Protocol):
    """Recorded executions (Redis), streamed per pair."""

    def scan(
        self, session_id: str, symbol: str, chunk: int = ...
    ) -> AsyncIterator[ReadResult[Fill]]: ...


class RecordLines(Protocol):
    """Recorded orders or fills (Redis) as migration reads them: TSV lines streamed per pair
    (columns ``records.ORDER_LINE_COLUMNS`` or ``FILL_LINE_COLUMNS``), and the stored text of
    some by their record keys."""

    def lines(
        self, session_id: str, symbol: str, chunk: int = ...
    ) -> AsyncIterator[ReadResult[str]]: ...
    async def raw(self, session_id: str, symbol: str, record_keys: Sequence[str]) -> list[str]: ...


class OrderWriter(Protocol):
    """Recording orders (Redis): the trading loop's quotes, settlement's take-profits."""

    async def save(self, order: Order) -> None: ...
    async def save_many(self, orders: Sequence[Order]) -> None: ...


class Orders(Protocol):
    """Recorded orders (Redis)."""

    async def get(self, session_id: str, symbol: str, order_id: str) -> Order | None: ...


class OrderBook(Orders, OrderWriter, Protocol):
    """Recorded orders, read and written (``OrderStore``)."""


class Notifier(Protocol):
    """Where alerts go (apprise URLs in production). Must never raise into a job."""

    async def notify(self, title: str, body: str, level: str = "warning") -> None: ...


class SettlementRecords(Protocol):
    """Service keys of settlement: the status hash and the last-run time (Redis)."""

    async def settlement_status(self, session_id: str) -> SettlementStatus | None: ...
    async def write_settlement_status(self, session_id: str, status: SettlementStatus) -> None:
        """Replace the status; its ``finished_at`` becomes the session's last-run time."""
        ...


class SettlementRuns(Protocol):
    """The history of settlement runs (PostgreSQL ``settlement_runs``)."""

    async def record(self, run: SettlementRun) -> None: ...


class SessionLocks(Protocol):
    """``lock:settlement:{S}`` and its group locks; ``hold`` raises LockNotAcquired when
    another worker has it, ``hold_all`` when one of them cannot be had within ``wait``."""

    def hold(
        self, session_id: str, scope: str = ""
    ) -> AbstractAsyncContextManager[SessionLease]: ...
    def hold_all(
        self, session_id: str, scopes: Sequence[str], wait: float
    ) -> AbstractAsyncContextManager[SessionLease]: ...


class MigrationTransaction(Protocol):
    """One session's migration transaction in the warehouse."""

    session: Session

    async def stage_orders(self, lines: Sequence[str]) -> None: ...
    async def stage_fills(self, lines: Sequence[str]) -> None: ...
    async def reject(self, rejects: Sequence[Reject]) -> None: ...
    async def move_orders(self) -> OrderMove: ...
    async def move_fills(self) -> FillMove: ...
    def orphans(self, chunk: int = ...) -> AsyncIterator[list[Stray]]: ...
    async def recompute_stats(self) -> MigrationCounts: ...
    async def copy_analytics(
        self, prices: PriceSource, take_profits: TakeProfitSource
    ) -> AnalyticsCopy: ...


class MigrationTarget(Protocol):
    """PostgreSQL as migration writes it."""

    def session(self, session: Session) -> AbstractAsyncContextManager[MigrationTransaction]: ...
    async def pending_sessions(self, limit: int, after: str | None = None) -> list[str]: ...
    async def mark_migrated(self, session_id: str, at: datetime) -> None: ...


class MigrationMarks(Protocol):
    """``migration:completed:{S}`` (Redis)."""

    async def migration_completed(self, session_id: str) -> str | None: ...
    async def mark_migration_completed(self, session_id: str, at: str) -> None: ...


class Venue(Exchange, Protocol):
    """A venue the paper trading loop can drive: it matches resting orders up to a time and
    lists the account's executions."""

    async def match(
        self, until: datetime | None = None, step_seconds: float = ...
    ) -> list[Trade]: ...

    async def path_cursor(self) -> str:
        """Where a reader of ``fill_path`` starting now begins."""
        ...

    async def fill_path(self, symbols: Sequence[str], after: str) -> tuple[list[list[Ticker]], str]:
        """The quotes of ``symbols`` at each time the venue's matches since the cursor
        ``after`` looked at, oldest first (what resting orders filled on), and the next
        cursor."""
        ...

    async def trades(self, start: int = 0) -> tuple[list[Trade], int]: ...

    async def fund(self, asset: str, amount: Decimal) -> None: ...


class FillWriter(Protocol):
    async def record(self, fill: Fill) -> bool:
        """Record a fill; True if new. A new buy fill also announces its (session, pair) on
        ``FillEvents``, so settlement covers it within a second."""
        ...


class FillEvents(Protocol):
    """New buy fills as (session, pair) to settle (a Redis Stream read by a consumer group):
    written by ``FillWriter.record``, read by the settle trigger. An event read and not
    acknowledged is delivered again (to another worker once it has been idle ``claim_after``)."""

    async def read(self, consumer: str, block_ms: int, count: int) -> list[FillEvent]: ...
    async def ack(self, event_ids: Sequence[str]) -> None: ...


class ExecutionFeed(Protocol):
    """The account's executions as the venue reports them: a live stream, and a history read
    from a cursor that fills the stream's gaps (at start, after a reconnect, when quiet)."""

    account: str  # names the account's persisted cursor

    async def history(self, cursor: str | None, since: datetime) -> tuple[list[Trade], str]:
        """Executions after ``cursor`` (or, with none, from ``since``), oldest first, and the
        cursor after the last of them. The result may overlap what was read before (trade ids
        make a replay harmless). Raises TemporaryError when the venue cannot answer now."""
        ...

    def stream(self) -> AsyncIterator[list[Trade]]:
        """Executions as they happen, one batch per venue message; an empty batch says the
        subscription is live (trades from then on will come), so the caller can close the
        gap between its history read and the stream. Ends by raising FeedDisconnected when
        the connection drops (the caller gap-fills and streams again)."""
        ...

    async def close(self) -> None: ...


class FeedCursors(Protocol):
    """The fill feed's persisted position in the account's history, per account (Redis)."""

    async def get(self, account: str) -> str | None: ...
    async def set(self, account: str, cursor: str) -> None: ...


class SessionLifecycle(Protocol):
    """Starting and ending a session in Redis and PostgreSQL together (SessionRegistry)."""

    async def start(self, session: Session) -> Session: ...
    async def end(self, session_id: str, ended_at: datetime) -> None: ...


class WorkLeases(Protocol):
    """Sessions shared out between workers: each due session leased to one worker at a time
    (PostgreSQL ``FOR UPDATE SKIP LOCKED``), the longest-waiting first."""

    async def discover(self, kind: WorkKind, since: datetime) -> datetime: ...
    async def claim(
        self,
        kind: WorkKind,
        worker: str,
        limit: int,
        ttl: timedelta,
        due_age: timedelta,
        *,
        since: datetime,
        stale_due_age: timedelta | None = None,
        round_started: datetime | None = None,
    ) -> list[WorkItem]: ...
    async def begin_run(self, kind: WorkKind, worker: str, ttl: timedelta) -> datetime: ...
    async def beat(self, kind: WorkKind, worker: str) -> None: ...
    async def end_run(self, kind: WorkKind, worker: str) -> None: ...
    async def done(self, kind: WorkKind, item: WorkItem, worker: str) -> bool: ...
    async def release(self, kind: WorkKind, item: WorkItem, worker: str) -> bool: ...
    async def splittable(self, since: datetime, max_pairs: int) -> dict[str, tuple[str, ...]]: ...
    async def set_parts(
        self, kind: WorkKind, session_id: str, parts: Mapping[str, Sequence[str]]
    ) -> None: ...
    async def renew(self, kind: WorkKind, item: WorkItem, worker: str, ttl: timedelta) -> bool: ...
    def hold(
        self, kind: WorkKind, worker: str, round_started: datetime
    ) -> AbstractAsyncContextManager[str | None]: ...
    async def mark_stale(self, after: timedelta) -> tuple[list[str], list[str]]: ...
    async def stale(self, session_ids: list[str]) -> set[str]: ...


class PriceRecorder(Protocol):
    """Where a run's tickers go (Redis ``prices:{S}``: ``mmops.adapters.redis.prices``)."""

    async def record(self, session_id: str, tickers: Sequence[Ticker]) -> None:
        """Append one run's tickers of the session: one store call."""
        ...


class PathRecorder(Protocol):
    """Where the paper loop puts its venue's fill path (Redis ``path:{S}``)."""

    async def record_path(self, session_id: str, steps: Sequence[Sequence[Ticker]]) -> None:
        """Append the quotes of the session's pairs, one entry per match step: one store call."""
        ...


class PriceSource(Protocol):
    """``mmops.adapters.redis.prices.PriceStore``: the recorded prices of a series (the
    settlement runs' tickers, or the fill path), read after an entry."""

    def read_after(
        self, session_id: str, after: str | None, chunk: int = ..., *, series: PriceSeries = ...
    ) -> AsyncIterator[tuple[str, ReadResult[Ticker]]]: ...


class TakeProfitSource(Protocol):
    """``mmops.adapters.redis.store.PositionStore``."""

    async def tp_orders(
        self, session_id: str, order_ids: Sequence[str]
    ) -> ReadResult[tuple[str, TakeProfitRecord]]: ...
