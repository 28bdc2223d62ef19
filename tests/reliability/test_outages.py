"""Scenario 4, outages: Redis or PostgreSQL unreachable, or stopped in the middle of a run.

The run fails fast, with a non-zero exit and a message naming what is down; nothing is left
half-written; the next run after recovery completes normally. The servers stopped here are the
test's own (tests/reliability/own_servers.py), never the machine's.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mmops.adapters.postgres import schema
from mmops.domain.models import Fill, Order, OrderStatus, Side
from tests.integration.world import world
from tests.reliability.own_servers import OwnPostgres, OwnRedis, free_port

FAST = 15.0  # seconds within which a run must give up on a server that is down


def mmops_process(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "mmops.entrypoints", *args], env=full, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    yield server
    server.close()


@pytest.mark.parametrize("command", [["settle"], ["migrate"], ["status"]])
def test_an_unreachable_redis_fails_fast_naming_redis(
    scenario: Any, database_url: str, command: list[str]
) -> None:
    s = scenario(4, "Outages: Redis unreachable")
    env = {"MMOPS_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "MMOPS_DATABASE_URL": database_url}  # fmt: skip
    started = time.monotonic()
    code, _, err = finish(mmops_process(env, *command), timeout=60)
    s.ran()
    s.holds("exits non-zero", code != 0)
    s.holds("the message names Redis", "Redis is unavailable" in err)
    s.holds(f"gives up within {FAST:g} s", time.monotonic() - started < FAST)
    s.holds("no traceback, one clear line", "Traceback" not in err)


@pytest.mark.parametrize("command", [["settle"], ["migrate"], ["db", "verify"]])
def test_an_unreachable_postgresql_fails_fast_naming_postgresql(
    scenario: Any, redis_url: str, command: list[str]
) -> None:
    s = scenario(4, "Outages: PostgreSQL unreachable")
    env = {"MMOPS_REDIS_URL": redis_url,
           "MMOPS_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/x"}  # fmt: skip
    started = time.monotonic()
    code, _, err = finish(mmops_process(env, *command), timeout=60)
    s.ran()
    s.holds("exits non-zero", code != 0)
    s.holds("the message names PostgreSQL", "PostgreSQL is unavailable" in err)
    s.holds(f"gives up within {FAST:g} s", time.monotonic() - started < FAST)
    s.holds("no traceback, one clear line", "Traceback" not in err)


async def test_redis_stopped_during_settlement_then_the_next_run_completes(
    scenario: Any, own_redis: OwnRedis, database_url: str
) -> None:
    s = scenario(4, "Outages: Redis stopped during settlement")
    pairs = ["BTC/USD", "ETH/USD", "SOL/USD"]
    async with world(own_redis.url, database_url) as w:
        sid = await w.start_session(pairs)
        for pair in pairs:
            await w.seed_positions(sid, pair, list(range(1, 61)))  # 4 batches a pair
        env = {
            "MMOPS_REDIS_URL": own_redis.url,
            "MMOPS_DATABASE_URL": database_url,
            "MMOPS_PAPER_VENUE": w.exchange.venue,
            "MMOPS_PAPER_FAULTS": '{"latency_ms": 500}',  # the run takes ~2.5 s
            "MMOPS_SETTLEMENT_LOCK_TTL": "2",
            "MMOPS_TP_ATTEMPT_TTL": "2",
            "MMOPS_TP_DEADLINE": "3",
            "MMOPS_TP_CLOCK_SKEW": "0",
        }
        proc = mmops_process(env, "settle", "--session", sid)
        await _until(lambda: w.rt.redis.exists(f"lock:settlement:{{{sid}}}"))
        await asyncio.sleep(0.7)  # in the middle of placing batches
        own_redis.stop()
        stopped = time.monotonic()
        code, _, err = finish(proc, timeout=60)
        s.ran()
        s.holds("the run exits non-zero", code != 0)
        s.holds("the message names Redis", "Redis is unavailable" in err)
        s.holds(f"it gives up within {FAST:g} s", time.monotonic() - stopped < FAST)

        own_redis.start()  # the append-only file brings the data back
        # The killed run's lock and attempts expire (TTL 2 s), and the balance it had reserved
        # but not sent is free again (lock TTL + deadline + skew: 5 s).
        await asyncio.sleep(5.2)
        env.pop("MMOPS_PAPER_FAULTS")
        code, _, err = finish(mmops_process(env, "settle", "--session", sid))
        s.holds("the next run completes normally", code == 0)
        for pair in pairs:
            orders = await w.take_profit_orders(sid, pair)
            clients = Counter(cid for _, cid, _ in orders)
            s.holds("no client order id placed twice", all(n == 1 for n in clients.values()))
            positions = await w.positions(sid, pair)
            s.holds("every position covered after recovery",
                    all(p.uncovered == 0 for p in positions))  # fmt: skip
            s.holds("no position covered beyond its filled quantity",
                    all(p.covered <= p.filled for p in positions))  # fmt: skip
            live = Counter(p for p, _, status in orders if status in ("open", "filled"))
            s.holds("one live take-profit per position", all(n == 1 for n in live.values()))


async def test_postgresql_stopped_during_migration_leaves_no_half_session(
    scenario: Any, own_postgres: OwnPostgres, redis_url: str
) -> None:
    s = scenario(4, "Outages: PostgreSQL stopped during migration")
    schema.upgrade(own_postgres.url)
    async with world(redis_url, own_postgres.url) as w:
        sids = [await w.start_session(["ADA/USD", "XRP/USD"]) for _ in range(6)]
        expected = {}
        for sid in sids:
            expected[sid] = await _record_fills(w, sid, ["ADA/USD", "XRP/USD"], 2500)
            await w.rt.registry.end(sid, w.rt.clock.now())
        env = {"MMOPS_REDIS_URL": redis_url, "MMOPS_DATABASE_URL": own_postgres.url,
               "MMOPS_MIGRATION_BATCH_SIZE": "2"}  # fmt: skip
        proc = mmops_process(env, "migrate")
        await _until(lambda: _any_migrated(own_postgres.url, sids), timeout=60)
        own_postgres.stop()
        stopped = time.monotonic()
        code, _, err = finish(proc, timeout=90)
        s.ran()
        s.holds("the run exits non-zero", code != 0)
        s.holds("the message names PostgreSQL", "PostgreSQL is unavailable" in err)
        s.holds(f"it gives up within {FAST:g} s", time.monotonic() - stopped < FAST)
        own_postgres.start()
        counts = _fill_counts(own_postgres.url, sids)
        s.holds("no session half-written: all of its fills or none",
                all(counts[sid] in (0, expected[sid]) for sid in sids))  # fmt: skip
        code, _, err = finish(mmops_process(env, "migrate"), timeout=120)
        s.holds("the next run completes normally", code == 0)
        counts = _fill_counts(own_postgres.url, sids)
        s.holds("100% of fills migrated after recovery",
                all(counts[sid] == expected[sid] for sid in sids))  # fmt: skip
        await w.rt.pool.close()


async def _record_fills(w: Any, sid: str, pairs: list[str], per_pair: int) -> int:
    now = w.rt.clock.now()
    for pair in pairs:
        orders, fills = [], []
        for i in range(per_pair):
            at = now - timedelta(seconds=per_pair - i)
            oid = f"{pair.replace('/', '')}-{i}"
            orders.append(Order(sid, oid, pair, Side.BUY, Decimal("0.5"), Decimal(10), at,
                                OrderStatus.FILLED, Decimal(10)))  # fmt: skip
            fills.append(Fill(sid, oid, pair, Side.BUY, Decimal("0.5"), Decimal(10),
                              Decimal("0.01"), at))  # fmt: skip
        await w.rt.orders.save_many(orders)
        for f in fills:
            await w.rt.fills.record(f)
    return per_pair * len(pairs)


def _fill_counts(url: str, sids: list[str]) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT session_id, count(*) FROM fills WHERE session_id = ANY(%s) GROUP BY 1", (sids,)
        ).fetchall()
    found = {sid: int(n) for sid, n in rows}
    return {sid: found.get(sid, 0) for sid in sids}


async def _any_migrated(url: str, sids: list[str]) -> bool:
    return any(_fill_counts(url, sids).values())


async def _until(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")
