"""Starting and ending sessions keeps Redis and PostgreSQL in step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres.sessions import SessionRepository
from mmops.adapters.redis.client import Redis
from mmops.adapters.redis.store import SessionStore
from mmops.domain.models import Session, SessionStatus
from mmops.services.sessions import SessionRegistry
from tests.conftest import SessionIds

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def registry(redis: Redis, pool: AsyncConnectionPool) -> SessionRegistry:
    return SessionRegistry(SessionStore(redis), SessionRepository(pool))


async def test_start_writes_redis_and_postgres(
    redis: Redis, pool: AsyncConnectionPool, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    pairs = ("BTC/USD", "ETH/USD", "BTC/EUR")
    await registry(redis, pool).start(
        Session(sid, pairs, NOW, capital=Decimal("25000"), exchange="paper")
    )
    live = await SessionStore(redis).get(sid)
    assert live is not None and live.pairs == pairs
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status, mode, exchange, pairs, pair_count, capital, started_at"
            " FROM sessions WHERE id = %s",
            (sid,),
        )
        row = await cur.fetchone()
    assert row == ("active", "paper", "paper", list(pairs), 3, Decimal("25000"), NOW)


async def test_end_updates_both(
    redis: Redis, pool: AsyncConnectionPool, session_ids: SessionIds
) -> None:
    sid = session_ids.new()
    reg = registry(redis, pool)
    await reg.start(Session(sid, ("BTC/USD",), NOW))
    await reg.end(sid, NOW + timedelta(hours=2))
    live = await SessionStore(redis).get(sid)
    stored = await SessionRepository(pool).get(sid)
    assert live is not None and stored is not None
    assert live.status is stored.status is SessionStatus.ENDED
    assert live.ended_at == stored.ended_at == NOW + timedelta(hours=2)


async def test_recent_sessions_read_pairs_from_jsonb(
    redis: Redis, pool: AsyncConnectionPool, session_ids: SessionIds
) -> None:
    reg = registry(redis, pool)
    far_future = NOW + timedelta(days=36_500)  # newer than any row other tests of this run wrote
    recent = session_ids.new("recent")
    old = session_ids.new("old")
    await reg.start(Session(recent, ("SOL/USD", "XRP/USD"), far_future - timedelta(hours=1)))
    await reg.start(Session(old, ("BTC/USD",), far_future - timedelta(hours=30)))
    await reg.end(old, far_future - timedelta(hours=29))
    found = await reg.recent_sessions(hours_back=24, limit=50, now=far_future)
    by_id = {s.id: s for s in found}
    assert recent in by_id and old not in by_id
    assert by_id[recent].pairs == ("SOL/USD", "XRP/USD")
    assert by_id[recent].pair_count == 2
    limited = await reg.recent_sessions(hours_back=24, limit=1, now=far_future)
    assert [s.id for s in limited] == [recent]


async def test_deleting_a_session_deletes_its_analytics_rows_too(
    redis: Redis, pool: AsyncConnectionPool, session_ids: SessionIds
) -> None:
    """``mmops demo`` deletes ``demo-<seed>`` before running it again: no price, fill-path or
    take-profit row of the old run may be left for the new run's report or backtest."""
    sid, other = session_ids.new(), session_ids.new()
    async with pool.connection() as conn:
        for s in (sid, other):
            for table in ("prices", "price_path"):
                await conn.execute(
                    f"INSERT INTO {table} (session_id, symbol, at, bid, ask)"
                    " VALUES (%s, 'BTC/USD', %s, 1, 2)",
                    (s, NOW),
                )
            await conn.execute(
                "INSERT INTO take_profits (session_id, order_id, symbol, position, price, amount,"
                " generation, created_at, status) VALUES (%s, 'o1', 'BTC/USD', 'p1', 1, 1, 0, %s,"
                " 'open')",
                (s, NOW),
            )
    await SessionRepository(pool).delete(sid)
    async with pool.connection() as conn:
        for table in ("prices", "price_path", "take_profits"):
            cur = await conn.execute(
                f"SELECT session_id FROM {table} WHERE session_id IN (%s, %s)",
                (sid, other),
            )
            assert await cur.fetchall() == [(other,)], table
