"""Scenario 3, migration crashes: ``mmops migrate`` SIGKILLed mid-batch, run after run, over
sessions with thousands of fills; then a normal run. No session is ever half-written or marked
complete without all its fills, and in the end every fill and order is in PostgreSQL once,
``session_pair_stats`` equals the aggregates of the raw fills, and exactly the verified
sessions carry both completion marks.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from psycopg import AsyncConnection

from mmops.adapters.postgres.verify import verify
from mmops.adapters.postgres.warehouse import Warehouse
from mmops.adapters.redis import codec, keys
from mmops.bootstrap import build_migration
from mmops.domain.models import Fill, Order, OrderStatus, Side
from mmops.domain.pnl import fifo_pnl
from tests.integration.world import PAIRS, World
from tests.reliability.harness import (
    MakeScenario,
    check,
    cli_env,
    finish,
    kill,
    private_world,
    spawn,
)
from tests.reliability.ledger import Scenario

KILLS = 12
SEED = 20261124
PAIRS_USED = PAIRS[:3]
ORDERS_PER_PAIR = 400  # two fills each: 2,400 fills a session
NEW_SESSIONS_PER_RUN = 2
ACTIVE_ORDERS_PER_RUN = 60  # the session still trading gets this many more orders per pair
T0 = datetime(2026, 1, 1, tzinfo=UTC)

Execution = tuple[str, datetime, Decimal, Decimal]  # the identity PostgreSQL's unique key uses


def execution(f: Fill) -> Execution:
    return (f.order_id, f.timestamp, f.price.normalize(), f.quantity.normalize())


@dataclass
class Written:
    """What one session holds in Redis, as the test wrote it."""

    orders: dict[str, set[str]] = field(default_factory=dict)  # pair → order ids
    fills: dict[str, list[Fill]] = field(default_factory=dict)  # pair → distinct executions
    snapshots: list[int] = field(default_factory=lambda: [0])  # fill totals it has had

    @property
    def fill_count(self) -> int:
        return sum(len(f) for f in self.fills.values())

    @property
    def order_count(self) -> int:
        return sum(len(o) for o in self.orders.values())


async def write_trades(w: World, sid: str, data: Written, n: int, start: int) -> None:
    """``n`` orders per pair (numbered from ``start``), each filled in two parts, written the
    way the store lays them out; a few executions are recorded again under other fields, as a
    reconnecting trading loop may."""
    offset = len(w.session_ids) * 100_000
    async with w.rt.redis.pipeline(transaction=False) as pipe:
        for pair in PAIRS_USED:
            orders: dict[Any, Any] = {}
            fills: dict[Any, Any] = {}
            for i in range(start, start + n):
                at = T0 + timedelta(seconds=offset + i)
                oid = f"{pair.replace('/', '')}-o{i}"
                price = Decimal(100) + Decimal(i % 97) / 10
                side = Side.BUY if i % 2 == 0 else Side.SELL
                orders[oid] = codec.order_to_json(
                    Order(
                        sid, oid, pair, side, price, Decimal(2), at, OrderStatus.FILLED, Decimal(2)
                    )
                )
                for part in range(2):
                    f = Fill(
                        sid,
                        oid,
                        pair,
                        side,
                        price,
                        Decimal(1),
                        Decimal("0.025"),
                        at + timedelta(milliseconds=part),
                    )
                    fills[f.key] = codec.fill_to_json(f)
                    data.fills.setdefault(pair, []).append(f)
                data.orders.setdefault(pair, set()).update([oid])
            replays = list(fills.values())[:3]
            fills.update({f"replay-{start}-{k}": raw for k, raw in enumerate(replays)})
            pipe.hset(keys.orders(sid, pair), mapping=orders)
            pipe.hset(keys.fills(sid, pair), mapping=fills)
        await pipe.execute()
    data.snapshots.append(data.fill_count)


async def ended_session(w: World) -> tuple[str, Written]:
    sid = await w.start_session(PAIRS_USED)
    data = Written()
    await write_trades(w, sid, data, ORDERS_PER_PAIR, 0)
    await w.rt.registry.end(sid, w.rt.clock.now())
    return sid, data


async def open_write_transactions(w: World) -> int:
    """Transactions of other connections to this database that have written something."""
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
        )
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def kill_mid_transaction(
    w: World, proc: asyncio.subprocess.Process, delay: float
) -> tuple[str, bool]:
    """Kill ``proc`` ``delay`` s after its first write transaction opens; return how it ended
    and whether a write transaction was open at the moment of the kill."""
    deadline = time.monotonic() + 30
    while proc.returncode is None and not await open_write_transactions(w):
        assert time.monotonic() < deadline, "migrate never opened a transaction"
        await asyncio.sleep(0.005)
    await asyncio.sleep(delay)
    if proc.returncode is not None:
        return "finished", False
    mid = await open_write_transactions(w) > 0
    kill(proc)
    await asyncio.wait_for(proc.wait(), 10)
    return "killed", mid


@dataclass(frozen=True, slots=True)
class Stored:
    orders: int
    fills: int
    distinct_fills: int
    migrated_at: bool
    redis_mark: bool


async def stored(w: World, sessions: Sequence[str]) -> dict[str, Stored]:
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT s.id,"
            " (SELECT count(*) FROM orders o WHERE o.session_id = s.id),"
            " (SELECT count(*) FROM fills f WHERE f.session_id = s.id),"
            " (SELECT count(DISTINCT (f.order_id, f.symbol, f.timestamp, f.price, f.quantity))"
            "  FROM fills f WHERE f.session_id = s.id),"
            " s.migrated_at IS NOT NULL FROM sessions s WHERE s.id = ANY(%s)",
            (list(sessions),),
        )
        rows = await cur.fetchall()
    # One GET per session: each mark is in its own session's slot (MGET spans slots on a cluster).
    mark = {sid: await w.rt.redis.get(keys.migration_completed(sid)) for sid in sessions}
    return {r[0]: Stored(r[1], r[2], r[3], r[4], mark[r[0]] is not None) for r in rows}


def check_after_kill(
    s: Scenario, written: dict[str, Written], now: dict[str, Stored], active: str
) -> None:
    half, early, doubled = [], [], []
    for sid, data in written.items():
        st = now[sid]
        complete = (st.fills, st.orders) == (data.fill_count, data.order_count)
        if sid == active:  # still trading: all of some earlier state or all of this one
            if st.fills not in data.snapshots:
                half.append(f"{sid}: {st.fills} fills, snapshots {data.snapshots}")
        elif (st.fills, st.orders) != (0, 0) and not complete:
            half.append(
                f"{sid}: {st.fills}/{data.fill_count} fills, {st.orders}/{data.order_count} orders"
            )
        if (st.migrated_at or st.redis_mark) and not complete:
            early.append(f"{sid}: marked complete with {st.fills}/{data.fill_count} fills")
        if st.fills != st.distinct_fills:
            doubled.append(f"{sid}: {st.fills} rows, {st.distinct_fills} distinct")
    check(
        s,
        "no session is half-written: it has all its fills and orders or none "
        "(a session still trading: all of one earlier state)",
        half,
    )
    check(s, "no session is marked complete without all its fills and orders", early)
    check(s, "no fill is stored twice", doubled)


async def check_final(s: Scenario, w: World, written: dict[str, Written]) -> None:
    missing, stats_off = [], []
    async with w.rt.pool.connection() as conn:
        for sid, data in written.items():
            for pair in PAIRS_USED:
                cur = await conn.execute(
                    "SELECT order_id, timestamp, price, quantity FROM fills"
                    " WHERE session_id = %s AND symbol = %s",
                    (sid, pair),
                )
                pg = Counter(
                    (o, t, p.normalize(), q.normalize()) for o, t, p, q in await cur.fetchall()
                )
                want = Counter(execution(f) for f in data.fills[pair])
                cur = await conn.execute(
                    "SELECT order_id FROM orders WHERE session_id = %s AND symbol = %s",
                    (sid, pair),
                )
                orders = {r[0] for r in await cur.fetchall()}
                if pg != want or orders != data.orders[pair]:
                    missing.append(
                        f"{sid} {pair}: {sum(pg.values())} of {len(want)} fills, "
                        f"{len(orders)} of {len(data.orders[pair])} orders"
                    )
                stats_off += await _stats_differ(conn, sid, pair, data.fills[pair])
    check(s, "100% of fills and orders are in PostgreSQL, each exactly once", missing)
    check(s, "session_pair_stats equal the aggregates of the raw fills (and FIFO P&L)", stats_off)


async def _stats_differ(
    conn: AsyncConnection[Any], sid: str, pair: str, fills: list[Fill]
) -> list[str]:
    cur = await conn.execute(
        "SELECT orders, fills, buy_volume, sell_volume, buy_notional, sell_notional, fees,"
        " realized_pnl, open_quantity FROM session_pair_stats"
        " WHERE session_id = %s AND symbol = %s",
        (sid, pair),
    )
    stats = await cur.fetchone()
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM orders WHERE session_id = %s AND symbol = %s), count(*),"
        " sum(quantity) FILTER (WHERE side = 'buy'), sum(quantity) FILTER (WHERE side = 'sell'),"
        " sum(price * quantity) FILTER (WHERE side = 'buy'),"
        " sum(price * quantity) FILTER (WHERE side = 'sell'), sum(fee)"
        " FROM fills WHERE session_id = %s AND symbol = %s",
        (sid, pair, sid, pair),
    )
    raw = await cur.fetchone()
    pnl = fifo_pnl(sid, pair, sorted(fills, key=lambda f: f.timestamp))
    if stats is None or raw is None or tuple(stats[:7]) != tuple(raw):
        return [f"{sid} {pair}: stats {stats} vs aggregates {raw}"]
    if tuple(stats[7:]) != (pnl.realized, pnl.open_quantity):
        return [f"{sid} {pair}: P&L {stats[7:]} vs FIFO {pnl.realized, pnl.open_quantity}"]
    return []


async def test_killed_migrations_never_half_write_and_the_next_run_completes_everything(
    redis_url: str, admin_database_url: str, scenario: MakeScenario
) -> None:
    s = scenario(3, "Migration crashes")
    rng = random.Random(SEED)
    async with private_world(redis_url, admin_database_url) as w:
        active = await w.start_session(PAIRS_USED)
        written = {active: Written()}
        await write_trades(w, active, written[active], ACTIVE_ORDERS_PER_RUN, 0)
        outcomes: Counter[str] = Counter()
        env = cli_env(w)
        for i in range(KILLS):
            for _ in range(NEW_SESSIONS_PER_RUN):
                sid, data = await ended_session(w)
                written[sid] = data
            start = (i + 1) * ACTIVE_ORDERS_PER_RUN
            await write_trades(w, active, written[active], ACTIVE_ORDERS_PER_RUN, start)
            proc = await spawn(env, "migrate", "--batch-size", "2", quiet=True)
            try:
                ended, mid = await kill_mid_transaction(w, proc, rng.uniform(0.0, 0.2))
            finally:
                if proc.returncode is None:
                    kill(proc)
                    await proc.wait()
            s.ran()
            outcomes[ended + (" mid-transaction" if mid else "")] += 1
            now = await stored(w, list(written))
            check_after_kill(s, written, now, active)
        done = sum(st.migrated_at for st in now.values())
        print(f"kill outcomes: {dict(outcomes)}; {done} of {len(now)} sessions complete")
        s.holds(
            f"the kill landed while a session's transaction was open in "
            f"{outcomes['killed mid-transaction']} of {KILLS} runs",
            outcomes["killed mid-transaction"] >= KILLS // 3,
        )

        await w.rt.registry.end(active, w.rt.clock.now())
        run = await finish(await spawn(env, "migrate", "--json"))
        s.ran()
        assert run.rc == 0, run.out[-3000:] + run.err[-3000:]
        final = await stored(w, list(written))
        check_after_kill(s, written, final, active)
        await check_final(s, w, written)
        unmarked = [sid for sid, st in final.items() if not (st.migrated_at and st.redis_mark)]
        check(
            s,
            "every verified session carries both completion marks "
            "(migration:completed:{S} and sessions.migrated_at)",
            unmarked,
        )
        problems = await asyncio.to_thread(verify, w.rt.urls.database)
        check(s, "mmops db verify finds no problem", problems)
        async with w.rt.pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM migration_rejects")
            row = await cur.fetchone()
        s.holds("nothing valid was quarantined", row is not None and row[0] == 0)
        fills = sum(d.fill_count for d in written.values())
        print(f"{len(written)} sessions, {fills} fills verified")
        assert fills > 60_000


async def test_a_crash_between_the_two_completion_marks_is_healed_by_the_next_run(
    redis_url: str, admin_database_url: str, scenario: MakeScenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = scenario(3, "Migration crashes")
    async with private_world(redis_url, admin_database_url) as w:
        sid = await w.start_session(PAIRS_USED)
        await write_trades(w, sid, Written(), 20, 0)
        await w.rt.registry.end(sid, w.rt.clock.now())

        class Killed(BaseException):
            """The process dies here: nothing after this point runs."""

        async def die(*_: object) -> None:
            raise Killed

        with monkeypatch.context() as patch:  # the Redis mark is set, then the process dies
            patch.setattr(Warehouse, "mark_migrated", die)
            with pytest.raises(Killed):
                await build_migration(w.rt).run()
        s.ran()
        [before] = (await stored(w, [sid])).values()
        assert before.redis_mark and not before.migrated_at  # the crash fell between the two
        await build_migration(w.rt).run()  # the next scheduled run
        s.ran()
        [after] = (await stored(w, [sid])).values()
        s.holds(
            "a verified session carries both completion marks after the next run",
            after.migrated_at and after.redis_mark,
        )
