"""Price history in Redis (``prices:{S}``) and migration's analytics step (prices and
take-profit metadata into PostgreSQL), on real Redis and PostgreSQL with the paper venue."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from mmops.adapters.postgres.analytics_sync import copy_analytics
from mmops.adapters.redis import keys
from mmops.adapters.redis.client import Redis
from mmops.adapters.redis.prices import PriceStore
from mmops.bootstrap import build_migration
from mmops.domain.models import Ticker
from mmops.domain.records import TpStatus
from tests.conftest import SessionIds
from tests.integration.world import World, world

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def tick(symbol: str, bid: str, ask: str, seconds: int) -> Ticker:
    return Ticker(symbol, Decimal(bid), Decimal(ask), T0 + timedelta(seconds=seconds))


async def read_all(store: PriceStore, sid: str, chunk: int = 1000) -> tuple[list[Ticker], int]:
    items: list[Ticker] = []
    bad = 0
    async for _, part in store.read_after(sid, None, chunk=chunk):
        items.extend(part.items)
        bad += len(part.bad)
    return items, bad


async def test_recorded_tickers_read_back_in_order_and_the_key_is_registered(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new("px")
    store = PriceStore(redis)
    runs = [[tick("BTC/USD", "100", "101", i), tick("ETH/USD", "10", "10.1", i)] for i in range(7)]
    for run in runs:
        await store.record(sid, run)
    await store.record(sid, [])  # nothing fetched: nothing written
    items, bad = await read_all(store, sid, chunk=3)  # several chunks
    assert items == [t for run in runs for t in run] and bad == 0
    assert await redis.xlen(keys.prices(sid)) == 7
    assert keys.prices(sid) in await redis.smembers(keys.registry(sid))


async def test_the_stream_is_bounded_oldest_runs_trimmed_first(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new("px")
    store = PriceStore(redis, max_runs=10)
    for i in range(500):
        await store.record(sid, [tick("BTC/USD", "100", "101", i)])
    items, _ = await read_all(store, sid)
    # MAXLEN ~ trims whole macro nodes: bounded well below what was written, newest kept.
    assert 10 <= len(items) < 250
    assert items[-1].timestamp == T0 + timedelta(seconds=499)


async def test_a_value_that_does_not_parse_is_reported_not_dropped(
    redis: Redis, session_ids: SessionIds
) -> None:
    sid = session_ids.new("px")
    store = PriceStore(redis)
    await store.record(sid, [tick("BTC/USD", "100", "101", 0)])
    await redis.xadd(keys.prices(sid), {"BTC/USD": "1e999999 oops", "ETH/USD": "-1 2 x"})
    chunks = [c async for _, c in store.read_after(sid, None)]
    assert [t.bid for c in chunks for t in c.items] == [Decimal(100)]
    bad = [e for c in chunks for e in c.bad]
    assert len(bad) == 2 and all(e.key.startswith(keys.prices(sid) + "#") for e in bad)


async def test_recording_works_on_a_redis_cluster(redis_cluster_url: str) -> None:
    from mmops.adapters.redis.client import create_client
    from mmops.adapters.redis.store import SessionStore

    client = create_client(redis_cluster_url)
    sid = "px-cluster-1"
    try:
        store = PriceStore(client)
        await store.record(sid, [tick("BTC/USD", "100", "101", 0), tick("ETH/USD", "9", "9.1", 0)])
        items, _ = await read_all(store, sid)
        assert len(items) == 2
        assert keys.prices(sid) in await client.smembers(keys.registry(sid))
    finally:
        await SessionStore(client).delete_all(sid)
        await client.aclose()


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


async def copy(w: World, sid: str) -> dict[str, int]:
    async with w.rt.pool.connection() as conn, conn.transaction():
        result = await copy_analytics(conn, sid, prices=PriceStore(w.rt.redis),
                                      take_profits=w.rt.positions)  # fmt: skip
    assert result.ok, result.mismatches()
    return {
        "prices": result.prices_read, "tps": result.take_profits_read,
        "price_rejects": result.prices_rejected, "tp_rejects": result.take_profits_rejected,
    }  # fmt: skip


async def test_copy_moves_prices_and_take_profits_idempotently(w: World) -> None:
    pairs = ("BTC/USD", "ETH/USD")
    sid = await w.start_session(pairs)
    for pair in pairs:
        await w.seed_positions(sid, pair, [5, 90, 300])
    [result] = await w.settlement().run(sid)
    assert result.totals()["placed"] == 6
    await build_migration(w.rt).migrate(sid)  # orders (the take-profits among them) in PG
    store = PriceStore(w.rt.redis)
    for i in range(4):
        await store.record(sid, [tick(p, "100", "100.5", 60 * (i + 1)) for p in pairs])
    first = await copy(w, sid)
    again = await copy(w, sid)
    # The migration above copied the settlement run's tickers (one per pair); this copy the four
    # runs since, and a copy again nothing more (the open take-profits are read each time).
    assert first == {"prices": 8, "tps": 6, "price_rejects": 0, "tp_rejects": 0}
    assert again == {"prices": 0, "tps": 6, "price_rejects": 0, "tp_rejects": 0}
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT order_id, symbol, position, tier, markup, price, amount, generation,"
            " created_at, status FROM take_profits WHERE session_id = %s",
            (sid,),
        )
        rows = {r[0]: r[1:] for r in await cur.fetchall()}
        cur = await conn.execute("SELECT count(*) FROM prices WHERE session_id = %s", (sid,))
        assert (await cur.fetchone()) == (10,)
    placed = [p for report in result.pairs.values() for p in report.placed]
    assert sorted(rows) == sorted(p.order_id for p in placed)
    for p in placed:
        meta = await w.rt.positions.tp_order(sid, p.order_id)
        assert meta is not None
        assert rows[p.order_id] == (meta.pair, meta.position, meta.tier, meta.markup, meta.price,
                                    meta.amount, meta.generation, meta.created_at,
                                    meta.status.value)  # fmt: skip
    # A later copy carries the later state.
    await w.rt.positions.set_tp_status(sid, placed[0].order_id, TpStatus.FILLED)
    await copy(w, sid)
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT status FROM take_profits WHERE session_id = %s AND order_id = %s",
            (sid, placed[0].order_id),
        )
        assert (await cur.fetchone()) == ("filled",)


async def test_a_bad_price_is_quarantined_and_the_rest_copied(w: World) -> None:
    sid = await w.start_session(("BTC/USD",))
    store = PriceStore(w.rt.redis)
    await store.record(sid, [tick("BTC/USD", "100", "101", 0)])
    await w.rt.redis.xadd(keys.prices(sid), {"BTC/USD": "not a price"})
    await store.record(sid, [tick("BTC/USD", "100", "101", 5)])
    assert await copy(w, sid) == {"prices": 2, "tps": 0, "price_rejects": 1, "tp_rejects": 0}
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT kind, raw_payload FROM migration_rejects WHERE session_id = %s", (sid,)
        )
        assert await cur.fetchall() == [("price", "not a price")]


async def test_records_postgresql_would_refuse_are_quarantined_and_migration_completes(
    w: World,
) -> None:
    """A take-profit record with a zero price, a negative generation or a tier past INTEGER, and
    a price value holding a NUL: each goes to migration_rejects; the session still migrates."""
    pairs = ("BTC/USD",)
    sid = await w.start_session(pairs)
    await w.seed_positions(sid, "BTC/USD", [5, 90, 300])
    [result] = await w.settlement().run(sid)
    placed = [p.order_id for p in result.pairs["BTC/USD"].placed]
    assert len(placed) == 3
    await w.rt.redis.hset(keys.tp_order(sid, placed[0]), "price", "0")
    await w.rt.redis.hset(keys.tp_order(sid, placed[1]), "generation", "-1")
    await w.rt.redis.hset(keys.tp_order(sid, placed[2]), "tier", "99999999999")
    await w.rt.redis.xadd(keys.prices(sid), {"BTC/USD": "1\x00 2 x"})

    migrated = await build_migration(w.rt).migrate(sid)

    assert migrated.ok, (migrated.error, migrated.mismatches())
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT kind, count(*) FROM migration_rejects WHERE session_id = %s"
            " GROUP BY kind ORDER BY kind",
            (sid,),
        )
        assert await cur.fetchall() == [("price", 1), ("take_profit", 3)]
        cur = await conn.execute("SELECT count(*) FROM take_profits WHERE session_id = %s", (sid,))
        assert await cur.fetchone() == (0,)


async def test_each_migration_copies_only_the_prices_recorded_since_the_last(w: World) -> None:
    pairs = ("BTC/USD", "ETH/USD")
    sid = await w.start_session(pairs)
    store = PriceStore(w.rt.redis)
    for i in range(2):
        await store.record(sid, [tick(p, "100", "100.5", 60 * (i + 1)) for p in pairs])
    migration = build_migration(w.rt)
    assert (await migration.migrate(sid)).ok
    through = await prices_through(w, sid)
    assert through is not None

    await store.record(sid, [tick(p, "101", "101.5", 180) for p in pairs])
    async with w.rt.pool.connection() as conn, conn.transaction(force_rollback=True):
        copied = await copy_analytics(conn, sid, prices=store, take_profits=w.rt.positions)
    assert (copied.prices_read, copied.prices_held) == (2, 2)  # the new run only

    assert (await migration.migrate(sid)).ok
    assert await prices_through(w, sid) not in (None, through)
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM prices WHERE session_id = %s", (sid,))
        assert await cur.fetchone() == (6,)

    # A restore of an older backup takes the mark back with the rows: copied again.
    async with w.rt.pool.connection() as conn:
        await conn.execute("DELETE FROM prices WHERE session_id = %s", (sid,))
        await conn.execute("UPDATE sessions SET prices_through = NULL WHERE id = %s", (sid,))
    assert (await migration.migrate(sid)).ok
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute("SELECT count(*) FROM prices WHERE session_id = %s", (sid,))
        assert await cur.fetchone() == (6,)


async def prices_through(w: World, sid: str) -> str | None:
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute("SELECT prices_through FROM sessions WHERE id = %s", (sid,))
        row = await cur.fetchone()
    return None if row is None else row[0]


async def test_the_fill_path_is_its_own_stream_copied_into_price_path_incrementally(
    w: World,
) -> None:
    pairs = ("BTC/USD", "ETH/USD")
    sid = await w.start_session(pairs)
    store = PriceStore(w.rt.redis)
    steps = [[tick(p, "100", "100.5", 10 * (i + 1)) for p in pairs] for i in range(6)]
    await store.record_path(sid, [*steps[:3], []])  # an empty step writes nothing
    await store.record(sid, [tick(p, "99", "99.5", 30) for p in pairs])  # a run at a step's time
    assert await w.rt.redis.xlen(keys.price_path(sid)) == 3
    assert keys.price_path(sid) in await w.rt.redis.smembers(keys.registry(sid))
    migration = build_migration(w.rt)
    assert (await migration.migrate(sid)).ok
    await store.record_path(sid, steps[3:])
    async with w.rt.pool.connection() as conn, conn.transaction():
        copied = await copy_analytics(conn, sid, prices=store, take_profits=w.rt.positions)
    # Only the steps since the last copy, and no run: the two series have marks of their own.
    assert (copied.path_read, copied.path_held, copied.prices_read) == (6, 6, 0), copied
    assert copied.last_path_id is not None and copied.ok
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT symbol, at, bid FROM price_path WHERE session_id = %s ORDER BY at, symbol",
            (sid,),
        )
        assert await cur.fetchall() == [(t.symbol, t.timestamp, t.bid) for s in steps for t in s]
        cur = await conn.execute(
            "SELECT count(*), min(bid) FROM prices WHERE session_id = %s", (sid,)
        )
        assert await cur.fetchone() == (2, Decimal("99"))  # the run's, not the path's


async def test_a_bad_path_point_is_quarantined_as_a_price(w: World) -> None:
    sid = await w.start_session(("BTC/USD",))
    await w.rt.redis.xadd(keys.price_path(sid), {"BTC/USD": "nan 1 2024-05-01T09:00:00+00:00"})
    await PriceStore(w.rt.redis).record_path(sid, [[tick("BTC/USD", "100", "100.5", 10)]])
    result = await build_migration(w.rt).migrate(sid)
    assert result.ok
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT kind, symbol FROM migration_rejects WHERE session_id = %s", (sid,)
        )
        assert await cur.fetchall() == [("price", "BTC/USD")]
        cur = await conn.execute("SELECT count(*) FROM price_path WHERE session_id = %s", (sid,))
        assert await cur.fetchone() == (1,)
