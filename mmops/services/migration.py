"""The migration run: Redis → PostgreSQL, completely and exactly once.

Sessions whose migration is not complete are shared between workers: each run takes them one
at a time through a ``WorkLeases`` row lock (PostgreSQL ``FOR UPDATE SKIP LOCKED``, held while
the session migrates), so concurrent runs split the sessions instead of each migrating them
all, and a killed worker's sessions are free again at once. Each is migrated in one
PostgreSQL transaction: the session upserted, its orders and fills streamed from Redis pair by
pair in chunks, every record validated (a bad one quarantined in ``migration_rejects`` with its
raw payload, key and reason), fills inserted de-duplicated, ``session_pair_stats`` recomputed
from the rows. How the rows are written is the warehouse's choice, taken inside the
transaction under the session row's lock: a session with nothing in PostgreSQL yet goes with
one COPY straight into the tables, its checks done before (``first_copy``); any other through
staging and conflict-safe statements (see docs/MIGRATION.md). PostgreSQL's rows and rejects
per pair are counted in the transaction, by the statement that recomputes the statistics; after
the commit they are compared with Redis's; only an ended session whose counts match is marked
complete (``migration:completed:{S}`` and ``sessions.migrated_at``). Re-running is always
safe: nothing is inserted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmops import logs
from mmops.domain.models import Session, SessionStatus
from mmops.domain.records import MigrationCounts, ReadResult, Reject, RejectKind, Stray, WorkKind
from mmops.errors import RECOVERABLE_INPUT, UnknownSession
from mmops.ports import (
    Clock,
    LiveSessions,
    MigrationMarks,
    MigrationTarget,
    MigrationTransaction,
    PriceSource,
    RecordLines,
    SessionRecords,
    TakeProfitSource,
    WorkLeases,
)

log = logs.get_logger("mmops.migration")


# Sessions migrated at once: while some wait on PostgreSQL another reads Redis, so every core
# works. Each holds one pooled connection for its transaction. (2 to 6 measured alike on two
# cores; see docs/PERFORMANCE.md.)
CONCURRENT_SESSIONS = 4


@dataclass(slots=True)
class PairCounts:
    redis_orders: int = 0
    redis_fills: int = 0
    pg_orders: int = 0
    pg_fills: int = 0
    rejected_orders: int = 0
    rejected_fills: int = 0

    @property
    def complete(self) -> bool:
        """Every distinct record in Redis is in PostgreSQL or quarantined with a reason."""
        return (
            self.pg_orders + self.rejected_orders == self.redis_orders
            and self.pg_fills + self.rejected_fills == self.redis_fills
        )


@dataclass(slots=True)
class SessionMigration:
    session_id: str
    state: str = "failed"  # verified | incremental | mismatch | failed
    orders: int = 0
    fills_inserted: int = 0
    duplicates_skipped: int = 0
    rejects: int = 0
    pairs: dict[str, PairCounts] = field(default_factory=dict)
    error: str | None = None
    duration_ms: int = 0
    analytics: list[str] = field(default_factory=list)  # prices / take-profits not all held

    @property
    def ok(self) -> bool:
        return self.state in ("verified", "incremental")

    def mismatches(self) -> list[str]:
        return [
            *(
                f"{pair}: Redis {c.redis_orders} orders / {c.redis_fills} fills, PostgreSQL "
                f"{c.pg_orders} (+{c.rejected_orders} rejected) / {c.pg_fills} "
                f"(+{c.rejected_fills} rejected)"
                for pair, c in self.pairs.items()
                if not c.complete
            ),
            *self.analytics,
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "state": self.state,
            "orders": self.orders,
            "fills_inserted": self.fills_inserted,
            "duplicates_skipped": self.duplicates_skipped,
            "rejects": self.rejects,
            "verified": self.state == "verified",
            "mismatches": self.mismatches(),
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


class MigrationService:
    def __init__(
        self,
        live: LiveSessions,
        records: SessionRecords,
        orders: RecordLines,
        fills: RecordLines,
        warehouse: MigrationTarget,
        marks: MigrationMarks,
        clock: Clock,
        *,
        batch_size: int = 10,
        retention_seconds: int | None = None,
        leases: WorkLeases | None = None,
        worker: str = "migration",
        prices: PriceSource | None = None,
        take_profits: TakeProfitSource | None = None,
    ) -> None:
        self._live = live
        self._records = records
        self._orders = orders
        self._fills = fills
        self._warehouse = warehouse
        self._marks = marks
        self._clock = clock
        self.batch_size = batch_size
        self._retention = retention_seconds
        self._leases = leases
        self.worker = worker
        self._prices = prices  # price history and take-profit metadata (analytics);
        self._take_profits = take_profits  # not copied when either is None

    async def run(
        self,
        session_id: str | None = None,
        on_done: Callable[[SessionMigration], None] | None = None,
    ) -> list[SessionMigration]:
        """Migrate one session, or every session not yet complete (with leases: those no
        other run is migrating or has migrated since this run started), CONCURRENT_SESSIONS
        in flight at any time (a session starts as soon as another ends). An OperationalError
        cancels the rest and is raised."""
        if session_id is not None:
            await self._session(session_id)  # an unknown id is the caller's mistake: raised
            return [await self._reported(session_id, on_done)]
        if self._leases is not None:
            return await self._run_shared(self._leases, on_done)
        gate = asyncio.Semaphore(CONCURRENT_SESSIONS)
        tasks: list[asyncio.Task[SessionMigration]] = []
        try:
            async with asyncio.TaskGroup() as group:
                async for sid in self._pending():
                    await gate.acquire()
                    task = group.create_task(self._reported(sid, on_done))
                    task.add_done_callback(lambda _: gate.release())
                    tasks.append(task)
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure; the rest were cancelled
        return [task.result() for task in tasks]

    async def _run_shared(
        self, leases: WorkLeases, on_done: Callable[[SessionMigration], None] | None
    ) -> list[SessionMigration]:
        """CONCURRENT_SESSIONS takers, each holding one session's lease while migrating it."""
        round_started = await leases.discover(WorkKind.MIGRATION, self._clock.now())
        results: list[SessionMigration] = []

        async def take() -> None:
            while True:
                async with leases.hold(WorkKind.MIGRATION, self.worker, round_started) as sid:
                    if sid is None:
                        return
                    results.append(await self._reported(sid, on_done))

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(CONCURRENT_SESSIONS):
                    group.create_task(take())
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return results

    async def _pending(self) -> AsyncIterator[str]:
        after: str | None = None
        while batch := await self._warehouse.pending_sessions(self.batch_size, after):
            for sid in batch:
                yield sid
            after = batch[-1]

    async def _reported(
        self, session_id: str, on_done: Callable[[SessionMigration], None] | None
    ) -> SessionMigration:
        result = await self.migrate(session_id)
        if on_done is not None:
            on_done(result)
        return result

    async def migrate(self, session_id: str) -> SessionMigration:
        """Migrate one session; its failures are reported in the result, not raised, except
        an OperationalError (Redis or PostgreSQL down), which ends the run."""
        started = time.perf_counter()
        result = SessionMigration(session_id)
        try:
            session = await self._session(session_id)
            async with self._warehouse.session(session) as tx:
                stored = await self._copy(tx, session, result)
            await self._verify(session, result, stored)
        except RECOVERABLE_INPUT as e:  # a store down ends the run (rolled back)
            result.state, result.error = "failed", f"{type(e).__name__}: {e}"
            log.error("migration.failed", session=session_id, error=result.error)
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        log.info("migration.session", **result.to_dict())
        return result

    async def _session(self, session_id: str) -> Session:
        """The live state in Redis (status, end time) when present, else the registry row."""
        session = await self._live.get(session_id) or await self._records.get(session_id)
        if session is None:
            raise UnknownSession(session_id)
        return session

    async def _copy(
        self, tx: MigrationTransaction, session: Session, result: SessionMigration
    ) -> MigrationCounts:
        """The session's data sets, each read from Redis and written into the transaction in
        turn: orders, then fills (checked against the orders), then the statistics computed
        from both (the same statement counts the rows and rejects the transaction holds per
        pair: returned, for ``_verify``), then the analytics (recorded prices and take-profit
        metadata, counted back in the same transaction). A new data set is one more step here
        (and its counts in ``_verify``)."""
        for pair in session.pairs:
            result.pairs[pair] = PairCounts()
        await self._copy_orders(tx, session, result)
        await self._copy_fills(tx, session, result)
        stored = await tx.recompute_stats()
        if self._prices is not None and self._take_profits is not None:
            copied = await tx.copy_analytics(self._prices, self._take_profits)
            result.analytics = copied.mismatches()
            result.rejects += copied.rejected
        return stored

    async def _copy_orders(
        self, tx: MigrationTransaction, session: Session, result: SessionMigration
    ) -> None:
        """Orders, counting the Redis records: those staged (by key, in SQL) and those refused."""
        refused = await self._stage(self._orders, RejectKind.ORDER, tx.stage_orders, tx, session)
        moved = await tx.move_orders()
        await self._quarantine(tx, self._orders, RejectKind.ORDER, session.id, moved.strays)
        for pair in session.pairs:
            result.pairs[pair].redis_orders += moved.records.get(pair, 0) + refused[pair]
        result.orders = moved.written
        result.rejects += refused.total() + len(moved.strays)

    async def _copy_fills(
        self, tx: MigrationTransaction, session: Session, result: SessionMigration
    ) -> None:
        """Fills, counting what Redis holds as distinct executions (the identity PostgreSQL's
        unique key uses, so replays under other keys count once) plus each record
        quarantined."""
        refused = await self._stage(self._fills, RejectKind.FILL, tx.stage_fills, tx, session)
        moved = await tx.move_fills()
        orphans: Counter[str] = Counter()
        async for strays in tx.orphans():
            quarantined = await self._quarantine(
                tx, self._fills, RejectKind.FILL, session.id, strays
            )
            orphans.update(quarantined)
        for pair in session.pairs:
            result.pairs[pair].redis_fills += (
                moved.distinct.get(pair, 0) + orphans[pair] + refused[pair]
            )
        result.fills_inserted = moved.inserted
        result.duplicates_skipped = moved.staged - moved.inserted - orphans.total()
        result.rejects += refused.total() + orphans.total()

    @staticmethod
    async def _stage(
        source: RecordLines,
        kind: RejectKind,
        stage: Callable[[Sequence[str]], Awaitable[None]],
        tx: MigrationTransaction,
        session: Session,
    ) -> Counter[str]:
        """Stream every pair's records into the transaction, one pair after another, and
        quarantine those refused; return how many were refused per pair, each record once
        (HSCAN may return a field twice; only refused keys are held, and they are few)."""
        refused: dict[str, set[str]] = {}
        for pair in session.pairs:
            async for chunk in source.lines(session.id, pair):
                await stage(chunk.items)
                await tx.reject(_rejects(chunk, kind, pair))
                refused.setdefault(pair, set()).update(bad.key for bad in chunk.bad)
        return Counter({pair: len(keys) for pair, keys in refused.items()})

    @staticmethod
    async def _quarantine(
        tx: MigrationTransaction,
        source: RecordLines,
        kind: RejectKind,
        session_id: str,
        strays: list[Stray],
    ) -> dict[str, int]:
        """Reject the records PostgreSQL could not take, with their stored text; return how many
        per pair."""
        by_pair: dict[str, list[Stray]] = {}
        for stray in strays:
            by_pair.setdefault(stray.symbol, []).append(stray)
        for pair, group in by_pair.items():
            raws = await source.raw(session_id, pair, [stray.key for stray in group])
            await tx.reject([Reject(kind, pair, stray.key, raw, stray.reason)
                             for stray, raw in zip(group, raws, strict=True)])  # fmt: skip
        return {pair: len(group) for pair, group in by_pair.items()}

    async def _verify(
        self, session: Session, result: SessionMigration, pg: MigrationCounts
    ) -> None:
        """Compare, after the commit, what Redis held with what PostgreSQL holds (``pg``,
        counted in the session's transaction); mark an ended session complete if they match."""
        for pair in session.pairs:
            stored, counts = pg.pair(pair), result.pairs[pair]
            counts.pg_orders = stored.orders
            counts.pg_fills = stored.fills
            counts.rejected_orders = stored.rejects(RejectKind.ORDER)
            counts.rejected_fills = stored.rejects(RejectKind.FILL)
        if result.mismatches():
            result.state = "mismatch"
            log.error("migration.mismatch", session=session.id, details=result.mismatches())
            return
        if session.status is not SessionStatus.ENDED:
            result.state = "incremental"  # still trading: migrated so far, not complete
            return
        # Redis first, PostgreSQL last: discovery goes by sessions.migrated_at, so a crash
        # between the two leaves the session pending and the next run sets both.
        now = self._clock.now()
        await self._marks.mark_migration_completed(session.id, now.isoformat())
        if self._retention is not None:
            expired = await self._live.expire_all(session.id, self._retention)
            log.info("migration.retention", session=session.id, keys=expired,
                     seconds=self._retention)  # fmt: skip
        await self._warehouse.mark_migrated(session.id, now)
        result.state = "verified"


def _rejects(chunk: ReadResult[str], kind: RejectKind, pair: str) -> list[Reject]:
    """The records of a chunk that the domain refused or that belong elsewhere."""
    return [Reject(kind, pair, b.key, b.raw if isinstance(b.raw, str) else repr(b.raw), b.reason)
            for b in chunk.bad]  # fmt: skip
