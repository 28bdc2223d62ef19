"""Migration on real Redis and PostgreSQL: de-duplication, aggregates, interruption, rejects,
incremental passes and completion."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest

from mmops.adapters.postgres.warehouse import Warehouse
from mmops.adapters.redis import keys
from mmops.bootstrap import build_migration
from mmops.domain.models import Fill, Order, OrderStatus, Side
from mmops.domain.pnl import fifo_pnl
from mmops.domain.records import Reject, RejectKind
from mmops.errors import StoreUnavailable
from mmops.services.migration import MigrationService
from tests.integration.world import World, world

pytestmark = pytest.mark.integration


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


async def trade(w: World, sid: str, pair: str, n: int) -> list[Fill]:
    """n round trips on a pair: a buy in two partial fills, then a sell; returns the fills."""
    now = w.rt.clock.now()
    fills = []
    for i in range(n):
        at = now - timedelta(minutes=60 - i)
        buy = Order(sid, f"{pair[:3]}-b{i}", pair, Side.BUY, Decimal("100.5") + i, Decimal("2"),
                    at, OrderStatus.FILLED, Decimal("2"))  # fmt: skip
        sell = Order(sid, f"{pair[:3]}-s{i}", pair, Side.SELL, Decimal("101.5") + i, Decimal("2"),
                     at, OrderStatus.FILLED, Decimal("2"))  # fmt: skip
        await w.rt.orders.save_many([buy, sell])
        fills += [
            Fill(sid, buy.order_id, pair, Side.BUY, buy.price, Decimal("1.5"), Decimal("0.1"), at),
            Fill(sid, buy.order_id, pair, Side.BUY, buy.price, Decimal("0.5"), Decimal("0.05"),
                 at + timedelta(seconds=1)),
            Fill(sid, sell.order_id, pair, Side.SELL, sell.price, Decimal("2"), Decimal("0.2"),
                 at + timedelta(seconds=30), trade_id=f"T{pair[:3]}{i}"),
        ]  # fmt: skip
    for f in fills:
        await w.rt.fills.record(f)
    return fills


def migration(w: World) -> MigrationService:
    return build_migration(w.rt)


async def pg_rows(w: World, sql: str, *args: object) -> list[tuple[object, ...]]:
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(sql, args)
        return list(await cur.fetchall())


async def test_replayed_fills_give_one_row_each_and_a_rerun_changes_nothing(w: World) -> None:
    sid = await w.start_session(["SOL/USD", "DOT/USD"])
    fills = await trade(w, sid, "SOL/USD", 5) + await trade(w, sid, "DOT/USD", 3)
    for f in fills[:6]:  # the same executions recorded again: the store keeps one
        assert await w.rt.fills.record(f) is False
    # A writer that stored the same execution under other fields: PostgreSQL keeps one.
    raw = await w.rt.redis.hget(keys.fills(sid, "SOL/USD"), fills[0].key)
    await w.rt.redis.hset(keys.fills(sid, "SOL/USD"), mapping={"copy-1": raw, "copy-2": raw})
    await w.rt.registry.end(sid, w.rt.clock.now())

    [first] = await migration(w).run(sid)
    assert first.state == "verified", first.to_dict()
    assert first.fills_inserted == len(fills) == 24
    assert first.duplicates_skipped == 2
    assert first.orders == 16
    stats_before = await pg_rows(w, "SELECT * FROM session_pair_stats WHERE session_id = %s"
                                    " ORDER BY symbol", sid)  # fmt: skip
    [again] = await migration(w).run(sid)
    assert again.fills_inserted == 0 and again.state == "verified"
    [(count,)] = await pg_rows(w, "SELECT count(*) FROM fills WHERE session_id = %s", sid)
    assert count == 24
    stats_after = await pg_rows(w, "SELECT * FROM session_pair_stats WHERE session_id = %s"
                                   " ORDER BY symbol", sid)  # fmt: skip
    strip = [row[:-1] for row in stats_before]  # all but updated_at
    assert [row[:-1] for row in stats_after] == strip


async def test_pair_stats_equal_sql_aggregates_and_domain_fifo(w: World) -> None:
    sid = await w.start_session(["LINK/USD", "LTC/USD"])
    fills = {pair: await trade(w, sid, pair, 4) for pair in ("LINK/USD", "LTC/USD")}
    await migration(w).run(sid)
    for pair, pair_fills in fills.items():
        [stats] = await pg_rows(
            w,
            "SELECT orders, fills, buy_volume, sell_volume, buy_notional, sell_notional, fees,"
            " realized_pnl, open_quantity FROM session_pair_stats"
            " WHERE session_id = %s AND symbol = %s",
            sid,
            pair,
        )
        [raw] = await pg_rows(
            w,
            "SELECT (SELECT count(*) FROM orders WHERE session_id = %s AND symbol = %s),"
            " count(*), sum(quantity) FILTER (WHERE side = 'buy'),"
            " sum(quantity) FILTER (WHERE side = 'sell'),"
            " sum(price * quantity) FILTER (WHERE side = 'buy'),"
            " sum(price * quantity) FILTER (WHERE side = 'sell'), sum(fee)"
            " FROM fills WHERE session_id = %s AND symbol = %s",
            sid, pair, sid, pair,
        )  # fmt: skip
        assert stats[:7] == raw
        pnl = fifo_pnl(sid, pair, pair_fills)
        assert stats[7:] == (pnl.realized, pnl.open_quantity)
        sells = sum(f.price * f.quantity for f in pair_fills if f.side is Side.SELL)
        buys = sum(f.price * f.quantity for f in pair_fills if f.side is Side.BUY)
        assert pnl.realized == sells - buys - sum(f.fee for f in pair_fills)  # all closed


async def test_an_error_mid_session_leaves_nothing_and_the_next_run_completes(w: World) -> None:
    sid = await w.start_session(["ADA/USD", "AVAX/USD"])
    await trade(w, sid, "ADA/USD", 3)
    await trade(w, sid, "AVAX/USD", 3)
    await w.rt.registry.end(sid, w.rt.clock.now())
    service = migration(w)
    real_rows = service._fills.lines
    calls = {"n": 0}

    def failing_rows(session_id: str, symbol: str, chunk: int = 1000):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:  # after the first pair's fills were written into the transaction
            raise StoreUnavailable("Redis", "connection lost (injected)")
        return real_rows(session_id, symbol, chunk)

    service._fills.lines = failing_rows  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable, match="injected"):  # a store outage ends the run
        await service.run(sid)
    assert await pg_rows(w, "SELECT 1 FROM fills WHERE session_id = %s", sid) == []
    assert await pg_rows(w, "SELECT 1 FROM orders WHERE session_id = %s", sid) == []
    assert await w.rt.redis.get(keys.migration_completed(sid)) is None

    [done] = await migration(w).run(sid)
    assert done.state == "verified" and done.fills_inserted == 18


async def test_malformed_records_are_quarantined_and_the_rest_migrates(w: World) -> None:
    sid = await w.start_session(["XRP/USD"])
    await trade(w, sid, "XRP/USD", 2)
    fkey, okey = keys.fills(sid, "XRP/USD"), keys.orders(sid, "XRP/USD")
    good = json.loads(await w.rt.redis.hget(okey, "XRP-b0"))
    await w.rt.redis.hset(fkey, mapping={
        "nan": json.dumps({**json.loads(await w.rt.redis.hget(fkey, next(iter(
            await w.rt.redis.hkeys(fkey))))), "price": "NaN"}),
        "garbage": "{not json",
        "orphan": json.dumps({"session_id": sid, "order_id": "ghost", "symbol": "XRP/USD",
                              "side": "buy", "price": "1", "quantity": "1", "fee": "0",
                              "timestamp": w.rt.clock.now().isoformat(), "trade_id": None}),
        "wrong-pair": json.dumps({"session_id": sid, "order_id": "XRP-b0", "symbol": "BTC/USD",
                                  "side": "buy", "price": "1", "quantity": "1", "fee": "0",
                                  "timestamp": w.rt.clock.now().isoformat(), "trade_id": None}),
    })  # fmt: skip
    await w.rt.redis.hset(okey, "neg", json.dumps({**good, "order_id": "neg", "amount": "-3"}))
    await w.rt.registry.end(sid, w.rt.clock.now())
    [result] = await migration(w).run(sid)
    assert result.state == "verified", result.to_dict()
    assert result.rejects == 5 and result.fills_inserted == 6
    rejects = dict(await pg_rows(
        w, "SELECT split_part(redis_key, '#', 2), reason FROM migration_rejects"
           " WHERE session_id = %s", sid))  # fmt: skip
    assert set(rejects) == {"nan", "garbage", "orphan", "wrong-pair", "neg"}
    assert "ghost" in rejects["orphan"] and "finite" in rejects["nan"]
    [(payload,)] = await pg_rows(
        w, "SELECT raw_payload FROM migration_rejects WHERE session_id = %s"
           " AND redis_key LIKE %s", sid, "%#garbage")  # fmt: skip
    assert payload == "{not json"
    [again] = await migration(w).run(sid)
    assert again.state == "verified"
    [(n,)] = await pg_rows(w, "SELECT count(*) FROM migration_rejects WHERE session_id = %s", sid)
    assert n == 5


async def test_an_active_session_migrates_incrementally_and_completes_once_ended(
    w: World,
) -> None:
    sid = await w.start_session(["ETH/EUR"])
    await trade(w, sid, "ETH/EUR", 2)
    mine = [r for r in await migration(w).run() if r.session_id == sid]  # discovered as pending
    assert [r.state for r in mine] == ["incremental"]
    assert mine[0].fills_inserted == 6
    assert await w.rt.redis.get(keys.migration_completed(sid)) is None
    now = w.rt.clock.now()
    extra = Order(sid, "late", "ETH/EUR", Side.BUY, Decimal("2000"), Decimal("1"), now,
                  OrderStatus.FILLED, Decimal("1"))  # fmt: skip
    await w.rt.orders.save(extra)
    await w.rt.fills.record(
        Fill(sid, "late", "ETH/EUR", Side.BUY, Decimal("2000"), Decimal("1"), Decimal("5"), now)
    )
    await w.rt.registry.end(sid, now)
    [done] = await migration(w).run(sid)
    assert done.state == "verified" and done.fills_inserted == 1
    assert await w.rt.redis.get(keys.migration_completed(sid))
    [(migrated_at,)] = await pg_rows(w, "SELECT migrated_at FROM sessions WHERE id = %s", sid)
    assert migrated_at is not None
    assert sid not in [r.session_id for r in await migration(w).run()]  # complete: not again


async def test_an_order_id_recorded_under_two_pairs_is_kept_once_and_the_copy_quarantined(
    w: World,
) -> None:
    sid = await w.start_session(["BTC/USD", "BTC/EUR"])
    now = w.rt.clock.now()
    for pair in ("BTC/USD", "BTC/EUR"):
        await w.rt.orders.save(
            Order(sid, "same-id", pair, Side.BUY, Decimal("50000"), Decimal("0.1"), now)
        )
    await w.rt.registry.end(sid, now)
    [result] = await migration(w).run(sid)
    assert result.state == "verified", result.to_dict()
    assert (result.orders, result.rejects) == (1, 1)
    [(symbol,)] = await pg_rows(w, "SELECT symbol FROM orders WHERE session_id = %s", sid)
    [(reason,)] = await pg_rows(
        w, "SELECT reason FROM migration_rejects WHERE session_id = %s", sid
    )
    assert symbol == "BTC/EUR" and "also recorded under BTC/EUR" in reason


async def test_rejects_are_counted_by_their_kind_whatever_their_key_says(w: World) -> None:
    """Completeness counts each reject as the kind of record migration recorded, so a key
    renamed (or of another layout) can never make a pair's rejects count as none."""
    sid = await w.start_session(["BTC/USD"])
    session = await w.rt.registry.get(sid)
    assert session is not None
    warehouse = Warehouse(w.rt.pool)
    key = f"renamed:{{{sid}}}:BTC/USD#"
    async with warehouse.session(session) as tx:
        await tx.reject([
            Reject(RejectKind.ORDER, "BTC/USD", key + "o1", "{", "bad"),
            Reject(RejectKind.FILL, "BTC/USD", key + "f1", "{", "bad"),
            Reject(RejectKind.FILL, "BTC/USD", key + "f2", "{", "bad"),
        ])  # fmt: skip
    counts = (await warehouse.counts(sid)).pair("BTC/USD")
    assert (counts.rejects(RejectKind.ORDER), counts.rejects(RejectKind.FILL)) == (1, 2)
    assert await pg_rows(
        w, "SELECT kind, count(*) FROM migration_rejects WHERE session_id = %s GROUP BY 1"
           " ORDER BY 1", sid
    ) == [("fill", 2), ("order", 1)]  # fmt: skip
