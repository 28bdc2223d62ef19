"""``settlement_runs``: one row per session per settlement run (counts, errors, duration)."""

from __future__ import annotations

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres.pool import pg_errors
from mmops.domain.records import SettlementRun


class SettlementRunRepository:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def record(self, run: SettlementRun) -> None:
        async with pg_errors(), self._pool.connection() as conn:
            await conn.execute(
                "INSERT INTO settlement_runs (session_id, worker, state, started_at, finished_at,"
                " duration_ms, placed, skipped, failed, dry_run, details)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    run.session_id, run.worker, run.state.value, run.started_at, run.finished_at,
                    run.duration_ms, run.placed, run.skipped, run.failed, run.dry_run,
                    Jsonb(run.details),
                ),
            )  # fmt: skip
