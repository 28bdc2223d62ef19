"""The session registry in PostgreSQL: one row per session, pairs in a JSONB column."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres.pool import pg_errors
from mmops.domain.models import Session, SessionStatus
from mmops.errors import BadRecordError

_UPSERT = """
INSERT INTO sessions (id, status, mode, exchange, capital, started_at, ended_at, pairs, pair_count)
VALUES (%(id)s, %(status)s, %(mode)s, %(exchange)s, %(capital)s, %(started_at)s, %(ended_at)s,
        %(pairs)s, %(pair_count)s)
ON CONFLICT (id) DO UPDATE SET
    status = EXCLUDED.status, mode = EXCLUDED.mode, exchange = EXCLUDED.exchange,
    capital = EXCLUDED.capital, started_at = EXCLUDED.started_at,
    ended_at = EXCLUDED.ended_at, pairs = EXCLUDED.pairs, pair_count = EXCLUDED.pair_count,
    updated_at = now()
"""

_SESSION_TABLES = (
    "fills",
    "orders",
    "session_pair_stats",
    "migration_rejects",
    "settlement_runs",
    "prices",
    "price_path",
    "take_profits",
)

_COLUMNS = "id, status, mode, exchange, capital, started_at, ended_at, pairs, migrated_at"


class SessionRepository:
    """Reads and writes ``sessions`` rows. Every statement is parameterised."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    async def upsert(self, s: Session) -> None:
        params = {
            "id": s.id,
            "status": s.status.value,
            "mode": s.mode,
            "exchange": s.exchange,
            "capital": s.capital,
            "started_at": s.started_at,
            "ended_at": s.ended_at,
            "pairs": Jsonb(list(s.pairs)),
            "pair_count": s.pair_count,
        }
        async with pg_errors(), self._pool.connection() as conn:
            await conn.execute(_UPSERT, params)

    async def set_status(
        self, session_id: str, status: SessionStatus, ended_at: datetime | None = None
    ) -> None:
        async with pg_errors(), self._pool.connection() as conn:
            await conn.execute(
                "UPDATE sessions SET status = %s, ended_at = COALESCE(%s, ended_at),"
                " updated_at = now() WHERE id = %s",
                (status.value, ended_at, session_id),
            )

    async def delete(self, session_id: str) -> None:
        """Remove the session and everything migrated of it, in one transaction."""
        async with pg_errors(), self._pool.connection() as conn, conn.transaction():
            for table in _SESSION_TABLES:
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE session_id = %s").format(sql.Identifier(table)),
                    (session_id,),
                )
            await conn.execute("DELETE FROM sessions WHERE id = %s", (session_id,))

    async def get(self, session_id: str) -> Session | None:
        async with pg_errors(), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            query = f"SELECT {_COLUMNS} FROM sessions WHERE id = %s"  # noqa: S608 - constant
            await cur.execute(query, (session_id,))
            row = await cur.fetchone()
        return None if row is None else _to_session(row)

    async def recent(self, hours_back: int, limit: int, now: datetime) -> list[Session]:
        """Sessions started within ``hours_back`` hours of ``now`` or still running, newest
        first, at most ``limit``. Pairs come from the JSONB column."""
        since = now - timedelta(hours=hours_back)
        async with pg_errors(), self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_COLUMNS} FROM sessions"  # noqa: S608 - constant columns
                " WHERE started_at >= %s OR ended_at IS NULL OR ended_at >= %s"
                " ORDER BY started_at DESC LIMIT %s",
                (since, since, limit),
            )
            rows = await cur.fetchall()
        return [_to_session(row) for row in rows]


def _to_session(row: dict[str, Any]) -> Session:
    try:
        return Session(
            id=row["id"],
            pairs=tuple(row["pairs"]),
            started_at=row["started_at"],
            status=SessionStatus(row["status"]),
            mode=row["mode"],
            exchange=row["exchange"],
            capital=row["capital"],
            ended_at=row["ended_at"],
        )
    except (ValueError, TypeError) as e:
        raise BadRecordError(f"sessions#{row.get('id')}", row, str(e)) from e
