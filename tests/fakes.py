"""In-memory fakes of the store ports and the exchange, for service tests in milliseconds.

Each store fake keeps the semantics of its Redis (or PostgreSQL) adapter and nothing more;
``tests/contract/test_store_contract.py`` runs the same rules against both, so a fake cannot
drift from the real store. State is plain dictionaries a test may read.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from mmops.domain.allocation import (
    LedgerEntry,
    ReservationAnswer,
    ReservationRequest,
    reservation_available,
)
from mmops.domain.exchange import (
    ExchangeOrder,
    MarketRule,
    OrderRequest,
    PlacementResult,
    Trade,
    broken_rule,
    check_batch,
)
from mmops.domain.models import (
    ZERO,
    Balance,
    Fill,
    Market,
    Order,
    OrderStatus,
    PendingTakeProfit,
    Position,
    Session,
    SessionStatus,
    Side,
    Ticker,
)
from mmops.domain.records import (
    Coverage,
    Fence,
    ReadResult,
    SessionLease,
    SettlementRun,
    SettlementStatus,
    TakeProfitRecord,
    TpStatus,
)
from mmops.errors import (
    ExchangeRejected,
    ExchangeTimeout,
    InsufficientFunds,
    LockLost,
    LockNotAcquired,
    MinimumNotMet,
    MmopsError,
    OrderNotFound,
    PostOnlyWouldTake,
)
from mmops.ports import Clock


def _millis(at: datetime) -> int:
    return int(at.timestamp() * 1000)  # the score of the age-ordered indexes


@dataclass
class _Position:
    """``position:{S}:<id>`` as its fields: what ``codec.position_from_fields`` reads."""

    symbol: str
    opened_at: datetime
    fills: dict[str, tuple[Decimal, Decimal, Decimal]] = field(default_factory=dict)
    version: int = 0  # v
    generation: int = 0  # g
    covered_at: datetime | None = None  # c
    take_profits: dict[str, Decimal] = field(default_factory=dict)  # tp:<order id>
    pending: dict[int, PendingTakeProfit] = field(default_factory=dict)  # p:<generation>
    exits: dict[str, Decimal] = field(default_factory=dict)  # x:<order id>

    def read(self, session_id: str, position_id: str) -> Position:
        return Position(
            session_id=session_id,
            position_id=position_id,
            symbol=self.symbol,
            opened_at=self.opened_at,
            filled=sum((q for q, _, _ in self.fills.values()), ZERO),
            cost=sum((q * p for q, p, _ in self.fills.values()), ZERO),
            fees=sum((f for _, _, f in self.fills.values()), ZERO),
            covered=sum(self.take_profits.values(), ZERO),
            closed=sum(self.exits.values(), ZERO),
            version=self.version,
            generation=self.generation,
            take_profits=tuple(sorted(self.take_profits.items())),
            pending=tuple(marker for _, marker in sorted(self.pending.items())),
            first_covered_at=self.covered_at,
        )


class MemoryStore:
    """Fills, positions and orders of sessions: the fake of ``FillStore``, ``PositionStore``
    and ``OrderStore`` together (``FillWriter``, ``Fills``, ``Positions``, ``Orders``)."""

    def __init__(self, claims: FakeClaims | None = None, locks: FakeLocks | None = None) -> None:
        # What the fence checks: the attempt tokens and the session locks (same Redis slot).
        self._claims: FakeClaims | None = None
        self.claims = claims
        self.locks = locks
        self.fills: dict[tuple[str, str], dict[str, Fill]] = {}  # (session, pair) → key → fill
        self.positions: dict[tuple[str, str], _Position] = {}  # (session, position id)
        # the two ZSETs of a pair, (session, pair) → position id → score (ms)
        self.position_index: dict[tuple[str, str], dict[str, int]] = {}
        self.uncovered_index: dict[tuple[str, str], dict[str, int]] = {}
        self.take_profits: dict[tuple[str, str], TakeProfitRecord] = {}  # (session, order id)
        self.orders: dict[tuple[str, str, str], Order] = {}  # (session, pair, order id)

    @property
    def claims(self) -> FakeClaims | None:
        return self._claims

    @claims.setter
    def claims(self, claims: FakeClaims | None) -> None:
        """The claims the fence checks; they read their positions here (``acquire_reading``)."""
        self._claims = claims
        if claims is not None:
            claims.store = self

    # -- FillWriter, Fills ---------------------------------------------------------------

    async def record(self, fill: Fill) -> bool:
        """Record a fill once; a new buy grows its position and indexes it as uncovered."""
        recorded = self.fills.setdefault((fill.session_id, fill.symbol), {})
        if fill.key in recorded:
            return False
        recorded[fill.key] = fill
        if fill.side is Side.BUY:
            pair = (fill.session_id, fill.symbol)
            pos = self.positions.setdefault(
                (fill.session_id, fill.order_id), _Position(fill.symbol, fill.timestamp)
            )
            for index in (self.position_index, self.uncovered_index):  # ZADD NX
                index.setdefault(pair, {}).setdefault(fill.order_id, _millis(fill.timestamp))
            pos.fills[fill.key] = (fill.quantity, fill.price, fill.fee)
            pos.version += 1
        return True

    async def scan(
        self, session_id: str, symbol: str, chunk: int = 1000
    ) -> AsyncIterator[ReadResult[Fill]]:
        recorded = list(self.fills.get((session_id, symbol), {}).values())
        for start in range(0, len(recorded), chunk):
            yield ReadResult(items=recorded[start : start + chunk])

    # -- Orders --------------------------------------------------------------------------

    async def save(self, order: Order) -> None:
        self.orders[(order.session_id, order.symbol, order.order_id)] = order

    async def save_many(self, orders: Sequence[Order]) -> None:
        for order in orders:
            await self.save(order)

    async def get(self, session_id: str, symbol: str, order_id: str) -> Order | None:
        return self.orders.get((session_id, symbol, order_id))

    # -- Positions -----------------------------------------------------------------------

    async def uncovered(
        self, session_id: str, symbol: str, limit: int = -1
    ) -> ReadResult[Position]:
        ids = _by_score(self.uncovered_index.get((session_id, symbol), {}))
        return await self.read_many(session_id, ids if limit < 0 else ids[:limit])

    async def all(self, session_id: str, symbol: str) -> ReadResult[Position]:
        """Every position of the pair, oldest first (the union of both indexes, lowest score)."""
        union = dict(self.uncovered_index.get((session_id, symbol), {}))
        for pid, score in self.position_index.get((session_id, symbol), {}).items():
            union[pid] = min(score, union.get(pid, score))
        return await self.read_many(session_id, _by_score(union))

    async def read_many(self, session_id: str, ids: Sequence[str]) -> ReadResult[Position]:
        found = [(pid, self.positions.get((session_id, pid))) for pid in ids]
        return ReadResult(items=[p.read(session_id, pid) for pid, p in found if p is not None])

    async def fence(
        self, session_id: str, lease: SessionLease | None, marks: Sequence[Fence]
    ) -> set[str]:
        """As the fence script: nothing if the lock is not the lease's; else a marker (and the
        generation moved on) where the attempt token is still the holder's and the generation
        is the one the position was read at."""
        scope = lease.scope if lease is not None else ""
        holder = self.locks.token(session_id, scope) if self.locks is not None else None
        if lease is not None and holder != lease.token:
            lease.lost = True
            raise LockLost(session_id)
        fenced = set()
        for m in marks:
            pid, pos = m.position.position_id, self._pos(m.position)
            ours = self.claims is not None and self.claims.token(session_id, pid) == m.attempt_token
            if ours and pos.generation == m.pending.generation:
                pos.pending[m.pending.generation] = m.pending
                pos.generation = m.pending.generation + 1
                fenced.add(pid)
        return fenced

    async def clear_pending(self, marks: Sequence[tuple[Position, int]]) -> None:
        for position, generation in marks:
            self._pos(position).pending.pop(generation, None)

    async def record_coverage(self, coverages: Sequence[Coverage]) -> None:
        for c in coverages:
            s, pos = c.position.session_id, self._pos(c.position)
            if c.order is not None:
                await self.save(c.order)
            self.take_profits[(s, c.order_id)] = c.take_profit
            pos.take_profits[c.order_id] = c.amount
            pos.covered_at = pos.covered_at or c.take_profit.created_at
            pos.pending.pop(c.generation, None)
            pos.generation = max(pos.generation, c.generation + 1)
            if c.fully_covered and pos.version == c.position.version:
                self._index(c.position).pop(c.position.position_id, None)

    async def release_coverage(
        self, position: Position, order_id: str, status: TpStatus, kept: Decimal = ZERO
    ) -> None:
        pos = self._pos(position)
        if kept == 0:
            pos.take_profits.pop(order_id, None)
        else:
            pos.take_profits[order_id] = kept
        self._index(position).setdefault(position.position_id, _millis(position.opened_at))
        await self.set_tp_status(position.session_id, order_id, status)

    async def record_exit(self, position: Position, order_id: str, amount: Decimal) -> None:
        self._pos(position).exits[order_id] = amount
        self._index(position).pop(position.position_id, None)

    async def set_tp_status(self, session_id: str, order_id: str, status: TpStatus) -> None:
        record = self.take_profits.get((session_id, order_id))
        if record is not None:
            self.take_profits[(session_id, order_id)] = replace(record, status=status)

    async def amend_tp(
        self, session_id: str, order_id: str, price: Decimal, tier: int, markup: Decimal
    ) -> None:
        record = self.take_profits.get((session_id, order_id))
        if record is not None:
            amended = replace(
                record, price=price, tier=tier, markup=markup, amends=record.amends + 1
            )
            self.take_profits[(session_id, order_id)] = amended

    async def tp_order(self, session_id: str, order_id: str) -> TakeProfitRecord | None:
        return self.take_profits.get((session_id, order_id))

    async def tp_orders(
        self, session_id: str, order_ids: Sequence[str]
    ) -> ReadResult[tuple[str, TakeProfitRecord]]:
        found = [(oid, self.take_profits.get((session_id, oid))) for oid in order_ids]
        return ReadResult(items=[(oid, r) for oid, r in found if r is not None])

    def _pos(self, position: Position) -> _Position:
        return self.positions[(position.session_id, position.position_id)]

    def _index(self, position: Position) -> dict[str, int]:
        return self.uncovered_index.setdefault((position.session_id, position.symbol), {})


def _by_score(index: Mapping[str, int]) -> list[str]:
    """Ids as a ZSET orders them: by score, then by id."""
    return sorted(index, key=lambda pid: (index[pid], pid))


class FakeClaims:
    """``tp_attempt:{S}:{P}`` (``TakeProfitClaims``): a token per position, taken only if free
    (``SET NX``), gone after its TTL on ``clock``, deleted only by its holder's token."""

    def __init__(self, clock: Clock, ttl_seconds: float = 30) -> None:
        self._clock = clock
        self._ttl = timedelta(seconds=ttl_seconds)
        self.held: dict[tuple[str, str], tuple[str, datetime]] = {}  # → (token, expires)
        self.store: MemoryStore | None = None  # where positions are read (set by the store)

    async def acquire(self, session_id: str, position_ids: Sequence[str]) -> dict[str, str]:
        """One token for the call, as the Redis claims: it is the caller's, whatever the
        position."""
        now, tokens, token = self._clock.now(), {}, secrets.token_hex(12)
        for pid in position_ids:
            held = self.held.get((session_id, pid))
            if held is None or held[1] <= now:
                tokens[pid] = token
                self.held[(session_id, pid)] = (token, now + self._ttl)
        return tokens

    async def acquire_reading(
        self, session_id: str, position_ids: Sequence[str]
    ) -> tuple[dict[str, str], ReadResult[Position]]:
        """Claim, then read the positions claimed (one atomic step in Redis; nothing runs in
        between here either)."""
        if self.store is None:
            raise RuntimeError("FakeClaims reads positions through a MemoryStore: give it one")
        tokens = await self.acquire(session_id, position_ids)
        return tokens, await self.store.read_many(session_id, list(tokens))

    def token(self, session_id: str, position_id: str) -> str | None:
        """The live token of a position's attempt (what ``GET tp_attempt:{S}:{P}`` returns)."""
        held = self.held.get((session_id, position_id))
        return held[0] if held is not None and held[1] > self._clock.now() else None

    async def release(self, session_id: str, tokens: dict[str, str]) -> None:
        for pid, token in tokens.items():
            held = self.held.get((session_id, pid))
            if held is not None and held[0] == token:
                del self.held[(session_id, pid)]


class FakeReservations:
    """``reserve:{account}`` (``BalanceReservations``): the same ledger in memory, with exact
    decimals. Expiry is judged by each request's ``now`` (as the Redis script does)."""

    def __init__(self) -> None:
        self.ledgers: dict[str, dict[str, LedgerEntry]] = {}  # account → id → entry

    async def reserve(self, request: ReservationRequest) -> ReservationAnswer:
        ledger = self.ledgers.setdefault(request.account, {})
        for rid in [rid for rid, e in ledger.items() if e.expires <= request.now]:
            del ledger[rid]
        others = [e for rid, e in ledger.items() if rid != request.reservation_id]
        available = reservation_available(
            request.free, others, request.asset, request.snapshot, request.owner, request.now
        )
        if request.amount > available:
            return ReservationAnswer(False, available)
        ledger[request.reservation_id] = LedgerEntry(
            request.asset, request.amount, request.now + request.ttl, None, request.owner
        )
        return ReservationAnswer(True, available)

    async def placed(
        self, account: str, reservation_id: str, amount: Decimal, at: datetime, ttl: timedelta
    ) -> None:
        ledger = self.ledgers.get(account, {})
        entry = ledger.get(reservation_id)
        if entry is None:
            return
        if amount <= 0:
            del ledger[reservation_id]
        else:
            ledger[reservation_id] = replace(entry, amount=amount, expires=at + ttl, placed=at)

    async def release(self, account: str, reservation_id: str) -> None:
        self.ledgers.get(account, {}).pop(reservation_id, None)

    def live(self, account: str, now: datetime) -> list[LedgerEntry]:
        return [e for e in self.ledgers.get(account, {}).values() if e.expires > now]


class FakeLocks:
    """``lock:settlement:{S}`` and its group locks (``SessionLocks``): one holder per lock,
    released on exit. ``hold`` raises LockNotAcquired at once when the lock is held; ``hold_all``
    when any of them is."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], str] = {}  # (session, scope) → the holder's token

    def token(self, session_id: str, scope: str = "") -> str | None:
        return self.held.get((session_id, scope))

    def take_away(self, session_id: str, scope: str = "") -> None:
        """What a TTL lapsing during a pause does: another worker may now take the lock."""
        self.held[(session_id, scope)] = secrets.token_hex(12)

    @contextlib.asynccontextmanager
    async def hold(self, session_id: str, scope: str = "") -> AsyncIterator[SessionLease]:
        async with self.hold_all(session_id, (scope,), wait=0) as lease:
            yield lease

    @contextlib.asynccontextmanager
    async def hold_all(
        self, session_id: str, scopes: Sequence[str], wait: float
    ) -> AsyncIterator[SessionLease]:
        names = [(session_id, scope) for scope in sorted(set(scopes))]
        if any(name in self.held for name in names):
            raise LockNotAcquired(f"session {session_id} is being settled by another worker")
        lease = SessionLease(session_id, secrets.token_hex(12), scope=names[0][1])
        for name in names:
            self.held[name] = lease.token
        try:
            yield lease
        finally:
            for name in names:
                if self.held.get(name) == lease.token:
                    del self.held[name]


class FakeOps:
    """``settlement:status:{S}``, ``settlement:last_run:{S}`` and ``migration:completed:{S}``
    (``SettlementRecords``, ``MigrationMarks``)."""

    def __init__(self) -> None:
        self.statuses: dict[str, SettlementStatus] = {}
        self.last_runs: dict[str, datetime] = {}
        self.completed: dict[str, str] = {}

    async def settlement_status(self, session_id: str) -> SettlementStatus | None:
        return self.statuses.get(session_id)

    async def write_settlement_status(self, session_id: str, status: SettlementStatus) -> None:
        self.statuses[session_id] = status
        self.last_runs[session_id] = status.finished_at

    async def migration_completed(self, session_id: str) -> str | None:
        return self.completed.get(session_id)

    async def mark_migration_completed(self, session_id: str, at: str) -> None:
        self.completed[session_id] = at


class FakeRuns:
    """``settlement_runs`` (``SettlementRuns``): the rows recorded, in order."""

    def __init__(self) -> None:
        self.rows: list[SettlementRun] = []

    async def record(self, run: SettlementRun) -> None:
        self.rows.append(run)


class FakeLiveSessions:
    """``session:{S}`` (``LiveSessions``)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    async def save(self, s: Session) -> None:
        self.sessions[s.id] = s

    async def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    async def set_status(self, session_id: str, status: SessionStatus) -> None:
        self.sessions[session_id] = replace(self.sessions[session_id], status=status)

    async def end(self, session_id: str, ended_at: datetime) -> None:
        s = self.sessions[session_id]
        self.sessions[session_id] = replace(s, status=SessionStatus.ENDED, ended_at=ended_at)

    async def expire_all(self, session_id: str, seconds: int) -> int:
        return 1 if session_id in self.sessions else 0


class FakeSessionRecords:
    """The ``sessions`` table (``SessionRecords``)."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}

    async def upsert(self, s: Session) -> None:
        self.sessions[s.id] = s

    async def get(self, session_id: str) -> Session | None:
        return self.sessions.get(session_id)

    async def set_status(
        self, session_id: str, status: SessionStatus, ended_at: datetime | None = None
    ) -> None:
        s = self.sessions.get(session_id)
        if s is not None:
            self.sessions[session_id] = replace(s, status=status, ended_at=ended_at or s.ended_at)

    async def recent(self, hours_back: int, limit: int, now: datetime) -> list[Session]:
        """Started within ``hours_back`` of ``now`` or still running, newest first."""
        since = now - timedelta(hours=hours_back)
        found = [
            s
            for s in self.sessions.values()
            if s.started_at >= since or s.ended_at is None or s.ended_at >= since
        ]
        return sorted(found, key=lambda s: s.started_at, reverse=True)[:limit]


class FakeNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    async def notify(self, title: str, body: str, level: str = "warning") -> None:
        self.sent.append((title, body, level))


class MemoryExchange:
    """A venue in memory, for unit tests: one account, orders that rest until a test fills or
    cancels them. Refuses what every venue refuses (off-grid or below-minimum orders, a
    post-only order that would take, a sell beyond the free balance); a test may refuse a
    client id with an error of its choice (``refuse``) or make an accepted placement's answer
    get lost (``lose_answer``)."""

    name = "memory"
    account = "memory:test"

    def __init__(
        self,
        clock: Clock,
        markets: Mapping[str, Market],
        tickers: Mapping[str, Ticker],
        totals: Mapping[str, Decimal] | None = None,
    ) -> None:
        self._clock = clock
        self.markets_by_symbol = dict(markets)
        self.tickers_by_symbol = dict(tickers)
        self.totals = dict(totals or {})
        self.orders: dict[str, ExchangeOrder] = {}
        self.refuse: dict[str, MmopsError] = {}  # client order id → the error to answer with
        self.lose_answer: set[str] = set()  # client order ids placed whose answer is lost
        self.batches: list[list[OrderRequest]] = []
        self.lookups: list[str] = []  # client ids looked up, in order
        self.trades: list[Trade] = []  # the account's executions, oldest first
        self.fetched: list[list[str]] = []  # the ids of each fetch_orders call
        self._ids = itertools.count(1)

    async def markets(self) -> dict[str, Market]:
        return dict(self.markets_by_symbol)

    async def tickers(self, symbols: Sequence[str]) -> dict[str, Ticker]:
        return {s: self.tickers_by_symbol[s] for s in symbols if s in self.tickers_by_symbol}

    async def balances(self) -> dict[str, Balance]:
        used: dict[str, Decimal] = {}
        for o in self.orders.values():
            if o.status is OrderStatus.OPEN and o.side is Side.SELL:
                base = self.markets_by_symbol[o.symbol].base
                used[base] = used.get(base, ZERO) + o.remaining
        return {
            asset: Balance(asset, total - used.get(asset, ZERO), used.get(asset, ZERO), total)
            for asset, total in self.totals.items()
        }

    async def admit(self, symbol: str, orders: int) -> None:
        """No trading counter here: every batch is admitted at once."""

    async def place_batch(self, orders: Sequence[OrderRequest]) -> list[PlacementResult]:
        check_batch(orders)
        self.batches.append(list(orders))
        results = []
        for request in orders:
            error = self.refuse.get(request.client_order_id) or await self._refusal(request)
            if error is not None:
                results.append(PlacementResult(request, error=error))
                continue
            order = self._accept(request)
            if request.client_order_id in self.lose_answer:
                results.append(PlacementResult(request, error=ExchangeTimeout("answer lost")))
            else:
                results.append(PlacementResult(request, order=order))
        return results

    async def _refusal(self, r: OrderRequest) -> MmopsError | None:
        market, ticker = self.markets_by_symbol[r.symbol], self.tickers_by_symbol[r.symbol]
        if r.deadline is not None and self._clock.now() > r.deadline:
            return ExchangeRejected(f"deadline {r.deadline} elapsed")
        if any(
            o.client_order_id == r.client_order_id and o.status is OrderStatus.OPEN
            for o in self.orders.values()
        ):  # unique among open orders only, as Kraken's cl_ord_id
            return ExchangeRejected(f"duplicate client order id {r.client_order_id}")
        rule = broken_rule(r, market)
        if rule is MarketRule.TICK_AND_LOT:
            return ExchangeRejected(f"off the tick or lot: {r.amount} at {r.price}")
        if rule is MarketRule.MINIMUM:
            return MinimumNotMet(f"below the minimum: {r.amount} at {r.price}")
        if r.post_only and r.side is Side.SELL and r.price <= ticker.bid:
            return PostOnlyWouldTake("post-only sell at or below the bid")
        if r.side is Side.SELL:
            free = (await self.balances()).get(market.base)
            if free is None or free.free < r.amount:
                return InsufficientFunds(f"{r.amount} {market.base} is more than free")
        return None

    def _accept(self, r: OrderRequest) -> ExchangeOrder:
        takes = not r.post_only and r.price <= self.tickers_by_symbol[r.symbol].bid
        order = ExchangeOrder(
            id=f"X{next(self._ids)}",
            symbol=r.symbol,
            side=r.side,
            price=r.price,
            amount=r.amount,
            status=OrderStatus.FILLED if takes else OrderStatus.OPEN,
            created_at=self._clock.now(),
            filled=r.amount if takes else ZERO,
            client_order_id=r.client_order_id,
        )
        if takes:
            self.totals[self.markets_by_symbol[r.symbol].base] -= r.amount
        self.orders[order.id] = order
        return order

    def fill(self, order_id: str, amount: Decimal | None = None) -> ExchangeOrder:
        """Fill a resting sell completely (the market rose to it), or ``amount`` of it (it
        stays open); each fill is one execution in ``trades``."""
        order = self.orders[order_id]
        qty = order.remaining if amount is None else amount
        self.totals[self.markets_by_symbol[order.symbol].base] -= qty
        filled = order.filled + qty
        status = OrderStatus.FILLED if filled >= order.amount else OrderStatus.OPEN
        self.orders[order_id] = replace(order, status=status, filled=filled)
        fee = (qty * order.price * self.markets_by_symbol[order.symbol].maker_fee).quantize(
            Decimal("0.00000001")
        )
        self.trades.append(
            Trade(f"T{len(self.trades) + 1}", order_id, order.symbol, order.side, order.price,
                  qty, fee, self._clock.now(), order.client_order_id)
        )  # fmt: skip
        return self.orders[order_id]

    def engine_cancel(self, order_id: str) -> ExchangeOrder:
        """The venue closes a resting order on its own (a post-only that would cross, an
        expiry, a person on the venue's website)."""
        self.orders[order_id] = replace(self.orders[order_id], status=OrderStatus.CANCELED)
        return self.orders[order_id]

    async def cancel(self, symbol: str, order_id: str) -> ExchangeOrder:
        order = self.orders.get(order_id)
        if order is None or order.symbol != symbol or order.status is not OrderStatus.OPEN:
            raise OrderNotFound(f"no open order {order_id} for {symbol}")
        self.orders[order_id] = replace(order, status=OrderStatus.CANCELED)
        return self.orders[order_id]

    async def amend(self, symbol: str, order_id: str, price: Decimal) -> ExchangeOrder:
        order = self.orders.get(order_id)
        if order is None or order.symbol != symbol or order.status is not OrderStatus.OPEN:
            raise OrderNotFound(f"no open order {order_id} for {symbol}")
        if order.side is Side.SELL and price <= self.tickers_by_symbol[symbol].bid:
            raise PostOnlyWouldTake("EOrder:Post only order")
        self.orders[order_id] = replace(order, price=price)
        return self.orders[order_id]

    async def fetch_order(self, symbol: str, order_id: str) -> ExchangeOrder:
        order = self.orders.get(order_id)
        if order is None or order.symbol != symbol:
            raise OrderNotFound(f"no order {order_id} for {symbol}")
        return order

    async def open_orders(self, symbol: str | None = None) -> list[ExchangeOrder]:
        return [
            o
            for o in self.orders.values()
            if o.status is OrderStatus.OPEN and symbol in (None, o.symbol)
        ]

    async def fetch_orders(self, order_ids: Sequence[str]) -> dict[str, ExchangeOrder]:
        self.fetched.append(list(order_ids))
        return {oid: self.orders[oid] for oid in order_ids if oid in self.orders}

    async def order_trades(self, symbol: str, order_id: str) -> list[Trade]:
        order = self.orders.get(order_id)
        if order is None or order.symbol != symbol:
            raise OrderNotFound(f"no order {order_id} for {symbol}")
        return [t for t in self.trades if t.order_id == order_id]

    async def find_by_client_id(self, symbol: str, client_order_id: str) -> ExchangeOrder | None:
        """The open order with that client id, else the most recent one (as Kraken's
        OpenOrders, then ClosedOrders newest first)."""
        self.lookups.append(client_order_id)
        found = [
            o
            for o in self.orders.values()
            if o.symbol == symbol and o.client_order_id == client_order_id
        ]
        live = [o for o in found if o.status is OrderStatus.OPEN]
        return (live or found)[-1] if found else None

    async def close(self) -> None:
        return None
