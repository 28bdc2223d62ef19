"""Scenario 6, hostile and malformed input: every bad record is quarantined or rejected with a
reason and counted, the run goes on, nothing valid is lost; hostile identifiers never reach
SQL or another session's keys."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmops.adapters.redis import keys
from mmops.adapters.redis.client import create_client
from mmops.adapters.redis.store import FillStore, OrderStore, PositionStore, SessionStore
from mmops.bootstrap import build_migration
from mmops.domain.models import Fill, Order, OrderStatus, Session, Side
from mmops.domain.records import RunState
from mmops.errors import InvalidIdentifier
from tests.conftest import SessionIds
from tests.integration.world import world

PAIR = "ETH/USD"
T0 = datetime(2026, 2, 1, tzinfo=UTC)

HOSTILE_VALUES = st.one_of(
    st.sampled_from(
        [
            "NaN",
            "nan",
            "Infinity",
            "-Infinity",
            "sNaN",
            "-1",
            "-0.0001",
            "1e999999",
            "",
            " ",
            "1,5",
            "0x10",
            "ten",
            "9" * 400,
        ]
    ),
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True),
    st.integers(min_value=-(10**30)),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.text(max_size=40),
    st.text(min_size=5000, max_size=6000),
)
HOSTILE_IDS = st.sampled_from(
    [
        "x}y",
        "{other}",
        "a:b",
        "",
        " ",
        "é" * 3,
        "a" * 300,
        "BTC/USD'; DROP TABLE fills;--",
        "o1\n",
        "*",
        "?",
    ]
)
FIELDS = [
    "session_id",
    "order_id",
    "symbol",
    "side",
    "price",
    "quantity",
    "fee",
    "timestamp",
    "trade_id",
]


@st.composite
def bad_fill(draw: Any, sid: str) -> dict[str, Any]:
    """A fill record broken in one or more of the ways a hostile writer could break it."""
    record: dict[str, Any] = {
        "session_id": sid,
        "order_id": "o-1",
        "symbol": PAIR,
        "side": "buy",
        "price": "3000.5",
        "quantity": "0.1",
        "fee": "0.1",
        "timestamp": T0.isoformat(),
        "trade_id": None,
    }
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["drop", "extra", "value", "id", "pair", "time", "side"]))
        name = draw(st.sampled_from(FIELDS))
        if how == "drop":
            record.pop(name, None)
        elif how == "extra":
            record[draw(st.text(min_size=1, max_size=20))] = draw(HOSTILE_VALUES)
        elif how == "value":
            record[draw(st.sampled_from(["price", "quantity", "fee"]))] = draw(HOSTILE_VALUES)
        elif how == "id":
            record[draw(st.sampled_from(["order_id", "session_id", "trade_id"]))] = draw(
                HOSTILE_IDS
            )
        elif how == "pair":
            record["symbol"] = draw(st.sampled_from(["DOGE/USD", "XXX/YYY", "btc/usd", 7, None]))
        elif how == "time":
            record["timestamp"] = draw(
                st.sampled_from(
                    ["2026-02-01T00:00:00", "yesterday", 0, "2026-13-01T00:00:00+00:00"]
                )
            )
        else:
            record["side"] = draw(st.sampled_from(["BUY", "hold", "", None, 1]))
    return record


async def _good_data(fills: FillStore, orders: OrderStore, sid: str, n: int) -> list[Fill]:
    good = []
    for i in range(n):
        at = T0 + timedelta(seconds=i)
        await orders.save(
            Order(
                sid,
                f"g-{i}",
                PAIR,
                Side.BUY,
                Decimal(3000),
                Decimal(1),
                at,
                OrderStatus.FILLED,
                Decimal(1),
            )
        )
        fill = Fill(sid, f"g-{i}", PAIR, Side.BUY, Decimal(3000), Decimal(1), Decimal("0.5"), at)
        await fills.record(fill)
        good.append(fill)
    return good


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_bad_records_are_quarantined_and_valid_ones_all_migrate(
    scenario: Any, redis_url: str, database_url: str, data: st.DataObject
) -> None:
    s = scenario(6, "Hostile input: malformed records (hypothesis)")
    sid = f"h-{uuid.uuid4().hex[:10]}"
    bad = data.draw(st.lists(bad_fill(sid), min_size=1, max_size=6), label="bad records")

    async def run() -> None:
        async with world(redis_url, database_url) as w:
            await w.rt.registry.start(Session(sid, (PAIR, "BTC/USD"), T0))
            w.session_ids.append(sid)
            good = await _good_data(w.rt.fills, w.rt.orders, sid, 4)
            fkey = keys.fills(sid, PAIR)
            for i, record in enumerate(bad):
                await w.rt.redis.hset(fkey, f"bad-{i}", json.dumps(record))
            await w.rt.redis.hset(
                keys.position(sid, "p-bad"),
                mapping={"symbol": PAIR, "f:x": str(data.draw(HOSTILE_VALUES))},
            )
            await w.rt.redis.zadd(keys.uncovered(sid, PAIR), {"p-bad": 1})

            chunks = [c async for c in w.rt.fills.scan(sid, PAIR)]
            parsed = sum(len(c.items) for c in chunks)
            rejected = [b for c in chunks for b in c.bad]
            s.holds(
                "every record is parsed or reported, none dropped",
                parsed + len(rejected) == len(good) + len(bad),
            )
            s.holds(
                "each bad record carries its key, raw value and a reason",
                all(b.key.startswith(fkey) and b.raw and b.reason for b in rejected),
            )

            await w.rt.registry.end(sid, T0 + timedelta(hours=1))
            [result] = await build_migration(w.rt).run(sid)
            s.holds(
                "the migration run goes on and finishes", result.state in ("verified", "mismatch")
            )
            async with w.rt.pool.connection() as conn:
                cur = await conn.execute(
                    "SELECT order_id FROM fills WHERE session_id = %s AND order_id LIKE 'g-%%'",
                    (sid,),
                )
                migrated = {row[0] for row in await cur.fetchall()}
                cur = await conn.execute(
                    "SELECT count(*) FROM migration_rejects WHERE session_id = %s", (sid,)
                )
                row = await cur.fetchone()
            s.holds("nothing valid is lost", migrated == {f.order_id for f in good})
            s.holds(
                "every bad record is counted in migration_rejects",
                row is not None and row[0] >= len(rejected),
            )
            s.holds(
                "every distinct record is in PostgreSQL or quarantined", result.state == "verified"
            )

            [settled] = await w.settlement().run(sid)
            report = settled.pairs[PAIR]
            s.holds("settlement goes on and counts the bad position", report.bad_records >= 1)

    asyncio.run(run())
    s.ran()


async def test_hostile_identifiers_never_reach_keys_or_sql(
    scenario: Any, redis_url: str, database_url: str
) -> None:
    s = scenario(6, "Hostile input: identifiers")
    redis = create_client(redis_url)
    ids = SessionIds()
    try:
        for hostile in ["a}b", "x:{victim}", "{victim}", "victim}:fills", "s' OR 1=1 --", "a\x00b"]:
            for build in (keys.session, keys.settlement_lock, lambda h: keys.fills(h, PAIR)):
                with pytest.raises(InvalidIdentifier):
                    build(hostile)
            with pytest.raises(InvalidIdentifier):
                await SessionStore(redis).get(hostile)
            s.ran()
        s.holds("a session id that could close its hash tag is refused before any key", True)
        with pytest.raises(InvalidIdentifier):
            keys.fills("s1", "BTC/USD'; DROP TABLE fills;--")
        with pytest.raises(InvalidIdentifier):
            Session("s1", ("BTC/USD'; DROP TABLE fills;--",), T0)
        s.holds("a hostile pair is refused before any key or row", True)

        # Stored under a valid key, a hostile symbol is rejected, never executed.
        victim = ids.new("victim")
        await OrderStore(redis).save(
            Order(victim, "o1", PAIR, Side.BUY, Decimal(1), Decimal(1), T0)
        )
        record = {
            "session_id": victim,
            "order_id": "o1",
            "symbol": "BTC/USD'; DROP TABLE fills;--",
            "side": "buy",
            "price": "1",
            "quantity": "1",
            "fee": "0",
            "timestamp": T0.isoformat(),
            "trade_id": None,
        }
        await redis.hset(keys.fills(victim, PAIR), "evil", json.dumps(record))
        chunks = [c async for c in FillStore(redis).scan(victim, PAIR)]
        s.holds("the hostile record is reported bad", sum(len(c.bad) for c in chunks) == 1)
        positions = await PositionStore(redis).uncovered(victim, PAIR)
        s.holds("and touches no position", positions.items == [])
    finally:
        await ids.cleanup(redis)
        await redis.aclose()

    env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    env.update(MMOPS_REDIS_URL=redis_url, MMOPS_DATABASE_URL=database_url)
    for args in (
        ["settle", "--session", "x}:{y"],
        ["migrate", "--session", "s'; DROP TABLE fills;--"],
        ["verify-coverage", "--session", "a' OR '1'='1"],
    ):
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "mmops.entrypoints", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        s.holds("the CLI refuses hostile session ids with a non-zero exit", done.returncode != 0)
        s.holds("without a traceback", "Traceback" not in done.stderr)
    with psycopg.connect(database_url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables").fetchall()}
    s.holds("every table is still there", {"fills", "orders", "sessions"} <= tables)


# Hostile records that once ended a run or silently weakened it (issue 15). Each is written
# into Redis beside 47 good positions; the run must complete, cover every good position,
# evaluate the stop-loss, and report the bad record with its key and reason.
GOOD_POSITIONS = 47


async def _huge_contribution(w: Any, sid: str, good: list[str]) -> tuple[str, str, set[str]]:
    """A position whose contribution has an exponent one product of it overflows."""
    key = keys.position(sid, "p-huge")
    await w.rt.redis.hset(
        key,
        mapping={"symbol": PAIR, "opened_at": T0.isoformat(), "v": "1",
                 "f:t:x": "1E+999999|150|0"},
    )  # fmt: skip
    await w.rt.redis.zadd(keys.uncovered(sid, PAIR), {"p-huge": 1})
    return key, "40 digits", set(good)


async def _a_fill(w: Any, sid: str, name: str, **changes: str) -> str:
    """A copy of one of the pair's recorded fills under ``name``, with ``changes``."""
    fkey = keys.fills(sid, PAIR)
    record = json.loads(next(iter((await w.rt.redis.hgetall(fkey)).values())))
    record.update(changes, trade_id=name)
    await w.rt.redis.hset(fkey, f"t:{name}", json.dumps(record))
    return f"{fkey}#t:{name}"


async def _huge_fill(w: Any, sid: str, good: list[str]) -> tuple[str, str, set[str]]:
    """A fill whose quantity overflows the stop-loss's FIFO arithmetic."""
    return await _a_fill(w, sid, "huge", quantity="1E+999999"), "40 digits", set(good)


async def _other_pair_fill(w: Any, sid: str, good: list[str]) -> tuple[str, str, set[str]]:
    """A BTC/USD fill stored under the ETH/USD fills key."""
    return await _a_fill(w, sid, "stray", symbol="BTC/USD"), "BTC/USD", set(good)


async def _negative_contribution(w: Any, sid: str, good: list[str]) -> tuple[str, str, set[str]]:
    """A real position given a negative contribution, which would halve its coverage."""
    victim = good[0]
    key = keys.position(sid, victim)
    fields = await w.rt.redis.hgetall(key)
    qty, price, _fee = next(v for k, v in fields.items() if k.startswith("f:")).split("|")
    await w.rt.redis.hset(key, "f:t:neg", f"-{Decimal(qty) / 2}|{price}|0")
    return key, "must be > 0", set(good) - {victim}


@pytest.mark.parametrize(
    "poison",
    [_huge_contribution, _huge_fill, _other_pair_fill, _negative_contribution],
    ids=["huge-contribution", "huge-fill", "other-pair-fill", "negative-contribution"],
)
async def test_a_hostile_record_never_stops_a_run_or_silently_under_covers(
    scenario: Any, redis_url: str, database_url: str, poison: Any
) -> None:
    s = scenario(6, f"Hostile input: {poison.__doc__.splitlines()[0].lower().rstrip('.')}")
    async with world(redis_url, database_url) as w:
        sid = await w.start_session((PAIR, "BTC/USD"), capital=Decimal(100_000))
        good = await w.seed_positions(sid, PAIR, [5 * i for i in range(GOOD_POSITIONS)])
        key, reason, coverable = await poison(w, sid, good)

        [result] = await w.settlement().run(sid)
        s.holds("the run completes, partial for the bad record", result.state is RunState.PARTIAL)
        positions = {p.position_id: p for p in await w.positions(sid, PAIR)}
        s.holds(
            "every good position is covered",
            all(positions[p].uncovered == 0 and positions[p].take_profits for p in coverable),
        )
        placed = {p.position_id for p in result.pairs[PAIR].placed}
        s.holds("a take-profit is placed for each good position only", placed == coverable)
        venue = {position for position, _, _ in await w.take_profit_orders(sid, PAIR)}
        s.holds("the venue holds no order for the bad record", venue == coverable)
        s.holds("the stop-loss is evaluated", result.stoploss is not None and not result.error)
        status = await w.rt.ops.settlement_status(sid)
        s.holds(
            "the stop-loss figures are recorded",
            status is not None and status.stoploss is not None,
        )
        reported = [e for e in (status.errors if status else ()) if key in e]
        s.holds(
            "the bad record is reported with its key and reason",
            len(reported) == 1 and reason in reported[0],
        )
        s.ran()
