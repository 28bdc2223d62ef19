"""The migration run: Redis → PostgreSQL, completely and exactly once.

Sessions whose migration is not complete are taken in batches. Each is migrated in one
PostgreSQL transaction: the session upserted, its orders and fills streamed from Redis pair by
pair in chunks, every record validated (a bad one quarantined in ``migration_rejects`` with its
raw payload, key and reason), fills inserted de-duplicated, ``session_pair_stats`` recomputed
from the rows. After the commit, the Redis and PostgreSQL counts are compared per pair; only an
ended session whose counts match is marked complete (``migration:completed:{S}`` and
``sessions.migrated_at``). Re-running is always safe: nothing is inserted twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmops import logs
from mmops.domain.models import Session, SessionStatus
from mmops.domain.records import FillMove, Reject, StagedFill, StagedOrder
from mmops.errors import RECOVERABLE_INPUT, BadRecordError
from mmops.ports import (
    Clock,
    Fills,
    LiveSessions,
    MigrationMarks,
    Orders,
    SessionRecords,
    SessionWriter,
    Warehouse,
)

log = logs.get_logger("mmops.migration")

# Sessions of a batch migrated at once: while one waits on PostgreSQL another parses Redis data,
# so both cores work. Each holds one pooled connection for its transaction.
CONCURRENT_SESSIONS = 3


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

    @property
    def ok(self) -> bool:
        return self.state in ("verified", "incremental")

    def mismatches(self) -> list[str]:
        return [
            f"{pair}: Redis {c.redis_orders} orders / {c.redis_fills} fills, PostgreSQL "
            f"{c.pg_orders} (+{c.rejected_orders} rejected) / {c.pg_fills} "
            f"(+{c.rejected_fills} rejected)"
            for pair, c in self.pairs.items()
            if not c.complete
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
        orders: Orders,
        fills: Fills,
        warehouse: Warehouse,
        marks: MigrationMarks,
        clock: Clock,
        *,
        batch_size: int = 10,
        retention_seconds: int | None = None,
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

    async def run(
        self,
        session_id: str | None = None,
        on_done: Callable[[SessionMigration], None] | None = None,
    ) -> list[SessionMigration]:
        """Migrate one session, or every session not yet complete, batch by batch."""
        if session_id is not None:
            return [await self._reported(session_id, on_done)]
        results: list[SessionMigration] = []
        after: str | None = None
        gate = asyncio.Semaphore(CONCURRENT_SESSIONS)

        async def one(sid: str) -> SessionMigration:
            async with gate:
                return await self._reported(sid, on_done)

        while batch := await self._warehouse.pending_sessions(self.batch_size, after):
            results += await asyncio.gather(*(one(sid) for sid in batch))
            after = batch[-1]
        return results

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
                await self._copy(tx, session, result)
            await self._verify(session, result)
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
            raise LookupError(f"no session {session_id!r} in Redis or PostgreSQL")
        return session

    async def _copy(self, tx: SessionWriter, session: Session, result: SessionMigration) -> None:
        """Stream every order and fill into the transaction, counting what Redis holds: orders
        by id, fills as distinct executions (the identity PostgreSQL's unique key uses)."""
        for pair in session.pairs:
            counts = result.pairs.setdefault(pair, PairCounts())
            async for chunk in self._orders.scan(session.id, pair):
                counts.redis_orders += len(chunk.items) + len(chunk.bad)
                good, rejects = [], _rejects(chunk.bad, pair)
                for o, (key, raw) in zip(chunk.items, chunk.sources, strict=True):
                    if o.symbol == pair and o.session_id == session.id:
                        good.append(StagedOrder(o, key, raw))
                    else:
                        reason = f"order of {o.session_id}/{o.symbol} under {pair}"
                        rejects.append(Reject(pair, key, raw, reason))
                await tx.stage_orders(good)
                await tx.reject(rejects)
                result.rejects += len(rejects)
        result.orders, duplicated = await tx.move_orders()
        result.rejects += duplicated
        for pair in session.pairs:
            counts = result.pairs[pair]
            moved = FillMove(0, 0, 0)
            async for fills in self._fills.scan(session.id, pair):
                staged, rejects = [], _rejects(fills.bad, pair)
                for f, (key, raw) in zip(fills.items, fills.sources, strict=True):
                    if f.symbol == pair and f.session_id == session.id:
                        staged.append(StagedFill(f, key, raw))
                    else:
                        rejects.append(Reject(pair, key, raw, f"fill of {f.symbol} under {pair}"))
                await tx.stage_fills(staged)
                await tx.reject(rejects)
                counts.redis_fills += len(rejects)  # each quarantined record counts once
                result.rejects += len(rejects)
                step = await tx.move_fills()
                moved = FillMove(
                    moved.inserted + step.inserted,
                    moved.orphans + step.orphans,
                    moved.staged + step.staged,
                )
            # Fills that belong count as distinct executions (replays collapse, as in the
            # unique key); orphans were quarantined record by record.
            counts.redis_fills += await tx.distinct_fills(pair) + moved.orphans
            result.fills_inserted += moved.inserted
            result.duplicates_skipped += moved.duplicates
            result.rejects += moved.orphans
        await tx.recompute_stats()

    async def _verify(self, session: Session, result: SessionMigration) -> None:
        pg = await self._warehouse.counts(session.id)
        for pair in session.pairs:
            row, counts = pg.get(pair, {}), result.pairs[pair]
            counts.pg_orders = row.get("orders", 0)
            counts.pg_fills = row.get("fills", 0)
            counts.rejected_orders = row.get("rejected_orders", 0)
            counts.rejected_fills = row.get("rejected_fills", 0)
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


def _rejects(bad: list[BadRecordError], pair: str) -> list[Reject]:
    return [Reject(pair, b.key, b.raw if isinstance(b.raw, str) else repr(b.raw), b.reason)
            for b in bad]  # fmt: skip
