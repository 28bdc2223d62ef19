"""Migration's set-based writes on real Redis and PostgreSQL: the FIFO statistics computed in SQL,
the first-migration plain INSERT and its fallback, and two processes migrating one session."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmops.adapters.redis import codec, keys
from mmops.bootstrap import build_migration
from mmops.domain.models import Fill, Order, OrderStatus, Side
from mmops.domain.pnl import fifo_pnl
from tests.integration.world import World, world

pytestmark = pytest.mark.integration

PAIR = "ETH/USD"


@st.composite
def trades(draw: st.DrawFn) -> list[tuple[Side, Decimal, Decimal, Decimal, int]]:
    """Fills as (side, price, quantity, fee, second): sells can outrun buys (shorts), and
    several fills often share a second (ties the replay order must settle)."""
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(Side),
                st.integers(1, 10**6).map(lambda n: Decimal(n) / 100),
                st.integers(1, 10**5).map(lambda n: Decimal(n) / 1000),
                st.integers(0, 10**4).map(lambda n: Decimal(n) / 10**5),
                st.integers(0, 6),
            ),
            min_size=1,
            max_size=30,
        )
    )


async def record(
    w: World, sid: str, fills: list[tuple[Side, Decimal, Decimal, Decimal, int]]
) -> None:
    start = w.rt.clock.now() - timedelta(hours=1)
    for i, (side, price, quantity, fee, second) in enumerate(fills):
        at = start + timedelta(seconds=second)
        oid = ("o", "O", "o-", "o_")[i % 4] + str(i)  # ids whose order differs by collation
        order = Order(sid, oid, PAIR, side, price, quantity, at, OrderStatus.FILLED, quantity)
        await w.rt.orders.save(order)
        await w.rt.fills.record(Fill(sid, order.order_id, PAIR, side, price, quantity, fee, at))


async def rows(w: World, sql: str, *args: object) -> list[tuple[Any, ...]]:
    async with w.rt.pool.connection() as conn:
        return list(await (await conn.execute(sql, args)).fetchall())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(fills=trades())
def test_pair_stats_equal_the_domain_fifo_replay_of_the_stored_rows(
    redis_url: str, database_url: str, fills: list[tuple[Side, Decimal, Decimal, Decimal, int]]
) -> None:
    async def run() -> None:
        async with world(redis_url, database_url) as w:
            sid = await w.start_session([PAIR])
            await record(w, sid, fills)
            await w.rt.registry.end(sid, w.rt.clock.now())
            [result] = await build_migration(w.rt).run(sid)
            assert result.state == "verified", result.to_dict()
            stored = await rows(
                w,
                "SELECT order_id, side, price, quantity, fee, timestamp FROM fills"
                " WHERE session_id = %s ORDER BY random()",  # the replay sets its own order
                sid,
            )
            replayed = fifo_pnl(sid, PAIR, [
                Fill(sid, oid, PAIR, Side(side), price, qty, fee, at)
                for oid, side, price, qty, fee, at in stored
            ])  # fmt: skip
            [stats] = await rows(
                w,
                "SELECT fills, buy_volume, sell_volume, buy_notional, sell_notional, fees,"
                " realized_pnl, open_quantity FROM session_pair_stats WHERE session_id = %s",
                sid,
            )
            assert stats == (
                replayed.fills, replayed.buy_volume, replayed.sell_volume,
                replayed.buy_notional, replayed.sell_notional, replayed.fees,
                replayed.realized, replayed.open_quantity,
            )  # fmt: skip

    asyncio.run(run())


async def waiting_on_a_lock(w: World, seconds: float = 30) -> None:
    """Until another connection to this database waits on a row lock (or fail after
    ``seconds``)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await rows(
        w,
        "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
        " AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()",
    ):
        assert asyncio.get_running_loop().time() < deadline, "nothing waits on a lock"
        await asyncio.sleep(0.01)


@pytest.fixture
async def w(redis_url: str, database_url: str) -> Any:
    async with world(redis_url, database_url) as w:
        yield w


async def test_a_trade_id_recorded_for_two_executions_falls_back_and_is_reported_not_crashed(
    w: World,
) -> None:
    """Another writer stored a second execution under the same trade id of the same pair: the
    first migration's plain INSERT meets the conflict, rolls back to its savepoint and inserts
    with ON CONFLICT: one row for the trade id, and a mismatch that names the pair."""
    sid = await w.start_session([PAIR])
    now = w.rt.clock.now()
    order = Order(sid, "b-1", PAIR, Side.BUY, Decimal(2000), Decimal(2), now,
                  OrderStatus.FILLED, Decimal(2))  # fmt: skip
    await w.rt.orders.save(order)
    first = Fill(sid, "b-1", PAIR, Side.BUY, Decimal(2000), Decimal(1), Decimal(0), now, "T-SAME")
    await w.rt.fills.record(first)
    later = Fill(sid, "b-1", PAIR, Side.BUY, Decimal(2000), Decimal(1), Decimal(0),
                 now + timedelta(seconds=1), "T-SAME")  # fmt: skip
    await w.rt.redis.hset(keys.fills(sid, PAIR), "foreign-writer", codec.fill_to_json(later))
    await w.rt.registry.end(sid, now)

    [result] = await build_migration(w.rt).run(sid)
    assert result.state == "mismatch" and result.fills_inserted == 1
    assert [m.split(":")[0] for m in result.mismatches()] == [PAIR]
    assert await rows(w, "SELECT count(*) FROM fills WHERE session_id = %s", sid) == [(1,)]
    assert await w.rt.redis.get(keys.migration_completed(sid)) is None


async def test_one_trade_id_on_two_pairs_is_two_executions(w: World) -> None:
    """Exchanges that number trades per market repeat ids across pairs."""
    sid = await w.start_session([PAIR, "BTC/USD"])
    now = w.rt.clock.now()
    for pair, price in ((PAIR, Decimal(2000)), ("BTC/USD", Decimal(50000))):
        order = Order(sid, f"{pair[:3]}-1", pair, Side.BUY, price, Decimal(1), now,
                      OrderStatus.FILLED, Decimal(1))  # fmt: skip
        await w.rt.orders.save(order)
        await w.rt.fills.record(Fill(sid, order.order_id, pair, Side.BUY, price, Decimal(1),
                                     Decimal(0), now, trade_id="T-7"))  # fmt: skip
    await w.rt.registry.end(sid, now)
    [result] = await build_migration(w.rt).run(sid)
    assert result.state == "verified" and result.fills_inserted == 2, result.to_dict()


async def test_two_migrations_of_one_session_at_once_write_each_row_once(w: World) -> None:
    sid = await w.start_session([PAIR])
    await record(w, sid, [(Side.BUY if i % 3 else Side.SELL, Decimal(100 + i), Decimal(1),
                           Decimal("0.01"), i) for i in range(300)])  # fmt: skip
    # One execution stored again under a field name of another writer: counted once.
    stored = await w.rt.redis.hgetall(keys.fills(sid, PAIR))
    replay = next(iter(stored.values()))
    await w.rt.redis.hset(keys.fills(sid, PAIR), "replayed-elsewhere", replay)
    await w.rt.registry.end(sid, w.rt.clock.now())

    first, second = await asyncio.gather(
        build_migration(w.rt).migrate(sid), build_migration(w.rt).migrate(sid)
    )
    assert {first.state, second.state} == {"verified"}, (first.to_dict(), second.to_dict())
    assert first.fills_inserted + second.fills_inserted == 300
    assert await rows(w, "SELECT count(*) FROM fills WHERE session_id = %s", sid) == [(300,)]
    assert await rows(w, "SELECT count(*) FROM orders WHERE session_id = %s", sid) == [(300,)]


async def test_a_row_another_writer_commits_during_the_plain_insert_is_upserted_not_fatal(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another writer holds an uncommitted order of the session when migration checks that it
    has none: the plain INSERT waits for it, meets the committed row, and the savepoint's
    fallback upserts instead."""
    sid = await w.start_session([PAIR])
    await record(w, sid, [(Side.BUY, Decimal(100 + i), Decimal(1), Decimal(0), i)
                          for i in range(20)])  # fmt: skip
    await w.rt.registry.end(sid, w.rt.clock.now())
    async with w.rt.pool.connection() as other:
        await other.execute(
            "INSERT INTO orders (session_id, order_id, symbol, side, price, amount, status,"
            " created_at) VALUES (%s, 'o4', %s, 'buy', 1, 1, 'open', now())",
            (sid, PAIR),
        )
        migrating = asyncio.create_task(build_migration(w.rt).migrate(sid))
        await waiting_on_a_lock(w)  # the plain INSERT has met the uncommitted row
        assert not migrating.done()
        await other.commit()
    result = await migrating
    assert result.state == "verified", result.to_dict()
    assert "migration.conflict_retried" in capsys.readouterr().out
    assert await rows(w, "SELECT count(*) FROM orders WHERE session_id = %s", sid) == [(20,)]
    [(status, filled)] = await rows(
        w, "SELECT status, filled FROM orders WHERE session_id = %s AND order_id = 'o4'", sid
    )
    assert (status, filled) == ("filled", Decimal(1))  # upserted from the migrated record


async def test_a_record_with_text_postgresql_cannot_store_is_quarantined_not_fatal(
    w: World,
) -> None:
    """A NUL in a field name or a stored value, or bytes that are not UTF-8, are refused with
    a reason and recorded with escapes; the session migrates and is verified."""
    sid = await w.start_session([PAIR])
    await record(w, sid, [(Side.BUY, Decimal(100), Decimal(1), Decimal(0), 0)])
    fills = keys.fills(sid, PAIR)
    await w.rt.redis.hset(fills, mapping={"nul\x00name": "{}", "nul-value": "{\x00}",
                                          b"not-utf8-\xff": b"{\xfe}"})  # fmt: skip
    await w.rt.registry.end(sid, w.rt.clock.now())
    [result] = await build_migration(w.rt).run(sid)
    assert result.state == "verified" and result.rejects == 3, result.to_dict()
    stored = dict(await rows(w, "SELECT redis_key, raw_payload FROM migration_rejects"
                                " WHERE session_id = %s", sid))  # fmt: skip
    assert stored == {f"{fills}#nul\\x00name": "{}", f"{fills}#nul-value": "{\\x00}",
                      f"{fills}#not-utf8-\\udcff": "{\\udcfe}"}  # fmt: skip


async def test_a_huge_hostile_record_is_quarantined_once_however_often_it_changes(
    w: World,
) -> None:
    """A field name and payload far beyond a b-tree entry's size are recorded, one row per
    record; re-saved with other text, the record still has one reject row, with that text."""
    sid = await w.start_session([PAIR])
    await record(w, sid, [(Side.BUY, Decimal(100), Decimal(1), Decimal(0), 0)])
    name, noise = os.urandom(4000).hex(), os.urandom(8000).hex()
    await w.rt.redis.hset(keys.fills(sid, PAIR), name, noise)
    await w.rt.registry.end(sid, w.rt.clock.now())
    [first] = await build_migration(w.rt).run(sid)
    await w.rt.redis.hset(keys.fills(sid, PAIR), name, noise[::-1])
    [again] = await build_migration(w.rt).run(sid)
    assert (first.state, again.state) == ("verified", "verified"), again.to_dict()
    assert await rows(w, "SELECT raw_payload FROM migration_rejects WHERE session_id = %s",
                      sid) == [(noise[::-1],)]  # fmt: skip


async def test_a_session_whose_orders_are_lost_quarantines_every_fill_chunk_by_chunk(
    w: World,
) -> None:
    sid = await w.start_session([PAIR])
    await record(w, sid, [(Side.BUY, Decimal(100 + i), Decimal(1), Decimal(0), i % 7)
                          for i in range(2500)])  # fmt: skip
    await w.rt.redis.delete(keys.orders(sid, PAIR))
    await w.rt.registry.end(sid, w.rt.clock.now())
    [result] = await build_migration(w.rt).run(sid)
    assert result.state == "verified", result.to_dict()
    assert (result.fills_inserted, result.rejects, result.duplicates_skipped) == (0, 2500, 0)
    [(n, with_text)] = await rows(
        w, "SELECT count(*), count(*) FILTER (WHERE raw_payload LIKE '{%%') FROM migration_rejects"
           " WHERE session_id = %s AND reason LIKE 'fill references order %%'", sid)  # fmt: skip
    assert (n, with_text) == (2500, 2500)
