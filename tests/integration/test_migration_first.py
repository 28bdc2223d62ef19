"""A session's first migration (checks in Python, one COPY straight into the tables) on real
Redis and PostgreSQL: it writes exactly what the conflict-safe path writes, falls back to it
when PostgreSQL's keys see what the text did not, and only one of two concurrent migrations of
a session takes it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from mmops.adapters.postgres import warehouse
from mmops.adapters.redis import codec, keys
from mmops.bootstrap import build_migration
from mmops.domain.models import Fill, Order, OrderStatus, Side
from mmops.domain.records import RejectKind
from mmops.errors import IntegrityError
from tests.integration.world import World, world

pytestmark = pytest.mark.integration

PAIRS = ["BTC/USD", "BTC/EUR"]
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


async def messy_session(w: World) -> str:
    """An ended session with every kind of record migration has to sort out: replays under
    other fields (one of them carrying the trade id the first lacks), an order id under two
    pairs, fills whose order is missing, malformed records, and one execution whose price is
    spelled two ways (``100.5`` and ``100.50``)."""
    sid = await w.start_session(PAIRS)
    now = T0  # the same records in every session made here
    for p, pair in enumerate(PAIRS):
        fills_key = keys.fills(sid, pair)
        for i in range(40):
            at = now - timedelta(minutes=50 - i)
            side = Side.BUY if i % 3 else Side.SELL
            price = Decimal("100.5") + i + p
            order = Order(sid, f"{pair[4:]}-{i}", pair, side, price, Decimal(2), at,
                          OrderStatus.FILLED, Decimal(2))  # fmt: skip
            await w.rt.orders.save(order)
            for part in range(2):
                fill = Fill(sid, order.order_id, pair, side, price, Decimal(1), Decimal("0.01"),
                            at + timedelta(seconds=part))  # fmt: skip
                await w.rt.fills.record(fill)
        await w.rt.orders.save(Order(sid, "shared-id", pair, Side.BUY, Decimal(7), Decimal(1), now))
        stored = await w.rt.redis.hgetall(fills_key)
        first, second = sorted(stored)[:2]
        with_trade_id = json.loads(stored[second])
        with_trade_id["trade_id"] = f"T-{p}"
        await w.rt.redis.hset(fills_key, mapping={
            "replayed": stored[first],
            "replayed-with-trade-id": json.dumps(with_trade_id, separators=(",", ":")),
            "lost-order": codec.fill_to_json(Fill(sid, "gone", pair, Side.BUY, Decimal(1),
                                                  Decimal(1), Decimal(0), now)),
            "malformed": '{"price": "NaN"}',
        })  # fmt: skip
        await w.rt.redis.hset(keys.orders(sid, pair), "malformed", "{")
    # A fill as the store recorded it (not one of the records added above: a hash's order is
    # the server's, so "the first" could be the malformed one or the orphan).
    recorded = await w.rt.redis.hgetall(keys.fills(sid, "BTC/EUR"))
    added = {"replayed", "replayed-with-trade-id", "lost-order", "malformed"}
    respelled = json.loads(recorded[min(set(recorded) - added)])
    respelled["price"] = f"{Decimal(respelled['price']):.2f}"
    await w.rt.redis.hset(keys.fills(sid, "BTC/EUR"), "respelled", json.dumps(respelled))
    await w.rt.registry.end(sid, w.rt.clock.now())
    return sid


async def stored(w: World, sid: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything migration wrote for ``sid``, with the session id taken out of it."""
    queries = {
        "orders": "SELECT order_id, symbol, pair_index, side, kind, price, amount, filled,"
                  " status, client_order_id, created_at FROM orders WHERE session_id = %s",
        "fills": "SELECT order_id, symbol, side, price, quantity, fee, trade_id, timestamp"
                 " FROM fills WHERE session_id = %s",
        "rejects": "SELECT kind, symbol, replace(redis_key, session_id, 'S'),"
                   " replace(raw_payload, session_id, 'S'), reason FROM migration_rejects"
                   " WHERE session_id = %s",
        "stats": "SELECT symbol, orders, fills, buy_volume, sell_volume, buy_notional,"
                 " sell_notional, fees, realized_pnl, open_quantity FROM session_pair_stats"
                 " WHERE session_id = %s",
    }  # fmt: skip
    found = {}
    async with w.rt.pool.connection() as conn:
        for name, sql in queries.items():
            rows = await (await conn.execute(sql, (sid,))).fetchall()
            found[name] = sorted(rows, key=repr)
    return found


async def test_the_first_migration_writes_what_the_conflict_safe_path_writes(
    w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    first_sid, safe_sid = await messy_session(w), await messy_session(w)
    [first] = await build_migration(w.rt).run(first_sid)
    out = capsys.readouterr().out
    assert "first=True" in out and "migration.conflict_retried" in out  # the respelled price
    with monkeypatch.context() as patch:
        patch.setattr(warehouse, "_FIRST", "SELECT false")  # as if the session had rows
        [safe] = await build_migration(w.rt).run(safe_sid)
    assert "first=False" in capsys.readouterr().out

    summary = {k: v for k, v in first.to_dict().items() if k not in ("session", "duration_ms")}
    assert summary == {k: v for k, v in safe.to_dict().items()
                       if k not in ("session", "duration_ms")}  # fmt: skip
    assert first.state == "verified", first.to_dict()
    # Per pair 80 executions; one replay, the trade-id copy, and (BTC/EUR) the respelling
    # skipped; a lost-order fill, a malformed fill and a malformed order quarantined, and one
    # shared-id order quarantined under the pair after the first by name.
    assert (first.fills_inserted, first.duplicates_skipped, first.rejects) == (160, 5, 7)
    first_rows, safe_rows = await stored(w, first_sid), await stored(w, safe_sid)
    assert first_rows == safe_rows
    kept = [f for f in first_rows["fills"] if f[6] is not None]
    assert sorted(trade_id for *_, trade_id, _ in kept) == ["T-0", "T-1"]  # the copy with it


async def test_only_one_of_two_concurrent_migrations_of_a_session_takes_the_first_copy(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    """The decision is taken under the session row's lock: the second migration waits for the
    first to commit, then finds its rows and goes the conflict-safe way."""
    sid = await messy_session(w)
    one, two = await asyncio.gather(
        build_migration(w.rt).migrate(sid), build_migration(w.rt).migrate(sid)
    )
    paths = [line for line in capsys.readouterr().out.splitlines() if "migration.path" in line]
    assert sorted("first=True" in line for line in paths) == [False, True], paths
    assert {one.state, two.state} == {"verified"}, (one.to_dict(), two.to_dict())
    assert one.fills_inserted + two.fills_inserted == 160
    assert len((await stored(w, sid))["fills"]) == 160


async def test_a_session_migrated_before_takes_the_conflict_safe_path_and_changes_nothing(
    w: World, capsys: pytest.CaptureFixture[str]
) -> None:
    sid = await messy_session(w)
    await build_migration(w.rt).run(sid)
    before = await stored(w, sid)
    await w.rt.redis.delete(keys.migration_completed(sid))
    async with w.rt.pool.connection() as conn:
        await conn.execute("UPDATE sessions SET migrated_at = NULL WHERE id = %s", (sid,))
    capsys.readouterr()
    [again] = await build_migration(w.rt).run(sid)
    assert "first=False" in capsys.readouterr().out
    assert again.state == "verified" and again.fills_inserted == 0, again.to_dict()
    assert await stored(w, sid) == before


async def test_a_pair_copy_failing_while_the_next_pair_is_read_fails_the_whole_session(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pair's COPY goes on while the next pair is read from Redis: its error is raised all
    the same, and the session's transaction rolls back whole (its rejects too)."""
    sid = await messy_session(w)
    monkeypatch.setattr(warehouse, "_COPY_FILLS_FIRST", "COPY fills (no_such_column) FROM STDIN")
    with pytest.raises(IntegrityError, match="no_such_column"):
        await build_migration(w.rt).run(sid)
    assert await stored(w, sid) == {"orders": [], "fills": [], "rejects": [], "stats": []}


async def test_fills_written_in_several_batches_with_a_conflict_in_one_are_what_one_batch_writes(
    w: World, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A session's fills go in COPY batches of whole pairs: with a batch per pair, the pair
    whose price is spelled two ways is redone the conflict-safe way on its own, and the rows,
    rejects, statistics and summary are those of one batch for the whole session."""
    whole_sid, per_pair_sid = await messy_session(w), await messy_session(w)
    [whole] = await build_migration(w.rt).run(whole_sid)
    monkeypatch.setattr(warehouse, "FILL_BATCH", 1)
    capsys.readouterr()
    [per_pair] = await build_migration(w.rt).run(per_pair_sid)
    retried = [line for line in capsys.readouterr().out.splitlines()
               if "migration.conflict_retried" in line]  # fmt: skip
    assert len(retried) == 1 and "BTC/EUR" in retried[0] and "BTC/USD" not in retried[0]
    summary = {k: v for k, v in whole.to_dict().items() if k not in ("session", "duration_ms")}
    assert summary == {k: v for k, v in per_pair.to_dict().items()
                       if k not in ("session", "duration_ms")}  # fmt: skip
    assert per_pair.state == "verified", per_pair.to_dict()
    assert await stored(w, whole_sid) == await stored(w, per_pair_sid)


async def test_the_counts_taken_in_the_transaction_are_what_postgresql_holds_after_it(
    w: World,
) -> None:
    """Completeness compares Redis with the rows and rejects counted by the statistics
    statement, inside the session's transaction: the same figures as counting after the
    commit."""
    sid = await messy_session(w)
    [result] = await build_migration(w.rt).run(sid)
    assert result.state == "verified", result.to_dict()
    after = await warehouse.Warehouse(w.rt.pool).counts(sid)
    for pair in PAIRS:
        inside, stored_now = result.pairs[pair], after.pair(pair)
        assert (inside.pg_orders, inside.pg_fills) == (stored_now.orders, stored_now.fills)
        assert (inside.rejected_orders, inside.rejected_fills) == (
            stored_now.rejects(RejectKind.ORDER),
            stored_now.rejects(RejectKind.FILL),
        )
    assert sum(after.pair(p).rejects(RejectKind.FILL) for p in PAIRS) > 0


async def test_every_statement_of_a_session_is_planned_for_that_session(w: World) -> None:
    """psycopg prepares a statement run five times on a connection; a generic plan costed from
    statistics of a few sessions would scan whole tables for each new one. The session's
    transaction plans each execution for its own values."""
    sid = await w.start_session(PAIRS)
    session = await w.rt.registry.get(sid)
    assert session is not None
    async with warehouse.Warehouse(w.rt.pool).session(session) as tx:
        cur = await tx._conn.execute("SHOW plan_cache_mode")
        assert await cur.fetchone() == ("force_custom_plan",)
    async with w.rt.pool.connection() as conn:  # only for that transaction
        cur = await conn.execute("SHOW plan_cache_mode")
        assert await cur.fetchone() == ("auto",)
