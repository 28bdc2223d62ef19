"""A market maker that is not mmops (tests/e2e/external_mm.py, a separate process using redis-py
only) feeds mmops through the ingest stream while the ingest consumer runs; the session, its
fills and the quarantined message end up where docs/INGEST.md says, and ``mmops migrate``
verifies the session."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from mmops.adapters.postgres import schema
from mmops.adapters.redis import keys
from mmops.bootstrap import build_ingest
from tests.integration.world import World, world

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("external_mm.py")


@pytest.fixture
async def w(redis_url: str, empty_database_url: str) -> AsyncIterator[World]:
    schema.upgrade(empty_database_url)
    stream = f"e2e:ingest:{uuid.uuid4().hex[:10]}"
    async with world(redis_url, empty_database_url, ingest_stream=stream) as w:
        try:
            yield w
        finally:
            await w.rt.redis.delete(stream)


async def drained(w: World) -> bool:
    """Every message of the stream delivered to the group and acknowledged (the group's last
    delivered id is the stream's last: ``lag`` would say so, but only from Redis 7.0 on)."""
    stream = w.rt.settings.ingest_stream
    groups = await w.rt.redis.xinfo_groups(stream)
    [group] = [g for g in groups if g["name"] == keys.INGEST_GROUP]
    last = (await w.rt.redis.xinfo_stream(stream))["last-generated-id"]
    return bool(group["pending"] == 0 and group["last-delivered-id"] == last)


def mmops(env: dict[str, str], *args: str) -> Any:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "mmops.entrypoints", *args, "--json"],
        env=full, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"mmops {args} exited {done.returncode}: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


async def test_an_external_market_maker_feeds_mmops_through_the_ingest_stream(
    w: World, redis_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    sid = f"ext-{uuid.uuid4().hex[:10]}"
    w.session_ids.append(sid)
    consumer = build_ingest(w.rt)
    stop = asyncio.Event()
    running = asyncio.create_task(consumer.run("e2e-1", stop))

    mm = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), "--redis-url", redis_url, "--session", sid,
        "--stream", w.rt.settings.ingest_stream, "--pairs", "BTC/USD,ETH/USD", "--seconds", "2",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(mm.communicate(), 60)
    assert mm.returncode == 0, err.decode()[-3000:]
    sent = json.loads(out)
    for _ in range(200):
        if await drained(w):
            break
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(running, 10)
    assert await drained(w)

    async with w.rt.pool.connection() as conn:
        session = await (
            await conn.execute("SELECT pairs, status, ended_at FROM sessions WHERE id = %s", [sid])
        ).fetchone()
        rejects = await (
            await conn.execute(
                "SELECT message_id, reason FROM ingest_rejects WHERE session_id = %s", [sid]
            )
        ).fetchall()
    assert session is not None and session[0] == ["BTC/USD", "ETH/USD"]
    assert session[1] == "ended" and session[2] is not None
    for pair, n in sent["fills"].items():
        assert n > 0 and await w.rt.fills.count(sid, pair) == n  # each fill recorded once
    assert rejects == [(sent["malformed_id"], "price must be > 0, got -5")]
    totals = consumer.totals
    assert (totals.duplicates, totals.quarantined) == (1, 1), totals

    env = {
        "MMOPS_DATABASE_URL": empty_database_url,
        "MMOPS_REDIS_URL": redis_url,
        "MMOPS_DATA_DIR": str(tmp_path),
        "MMOPS_LOG_LEVEL": "WARNING",
    }
    [migrated] = mmops(env, "migrate", "--session", sid)["sessions"]
    assert migrated["verified"] is True, migrated
    assert migrated["fills_inserted"] == sum(sent["fills"].values())


async def test_serve_places_take_profits_within_a_second_of_an_external_market_makers_fills(
    w: World, redis_url: str, empty_database_url: str, tmp_path: Path
) -> None:
    """The same market maker, with ``mmops serve`` running as it would in production: every
    buy it reports gets its take-profit on the paper venue within a second of the fill, long
    before the (hour-long, here) schedule would run."""
    from tests.e2e.test_serve import free_port, serve, wait_for

    sid = f"ext-{uuid.uuid4().hex[:10]}"
    w.session_ids.append(sid)
    await w.exchange.fund("BTC", Decimal(1000))  # what the market maker's buys brought
    await w.exchange.fund("ETH", Decimal(10000))
    env = {
        "MMOPS_REDIS_URL": redis_url,
        "MMOPS_DATABASE_URL": empty_database_url,
        "MMOPS_DATA_DIR": str(tmp_path),
        "MMOPS_PAPER_VENUE": w.exchange.venue,
        "MMOPS_INGEST_STREAM": w.rt.settings.ingest_stream,
        "MMOPS_FILL_EVENTS_STREAM": w.rt.settings.fill_events_stream,
        "MMOPS_SETTLEMENT_INTERVAL": "3600",
        "MMOPS_MIGRATION_INTERVAL": "3600",
        "MMOPS_HTTP_PORT": str(free_port()),
        "MMOPS_LOG_FORMAT": "json",
    }
    with serve(env, tmp_path / "serve.log") as (proc, url):
        wait_for(lambda: httpx.get(f"{url}/readyz").json() == {"ready": True})
        mm = await asyncio.create_subprocess_exec(
            sys.executable, str(SCRIPT), "--redis-url", redis_url, "--session", sid,
            "--stream", w.rt.settings.ingest_stream, "--pairs", "BTC/USD,ETH/USD",
            "--seconds", "3", "--interval", "0.2",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(mm.communicate(), 60)
        assert mm.returncode == 0, err.decode()[-3000:]
        orders = json.loads(out)["orders"]

        async def all_covered() -> list[float] | None:
            waits = []
            for pair in ("BTC/USD", "ETH/USD"):
                positions = (await w.rt.positions.all(sid, pair)).items
                for p in positions:
                    if not p.take_profits:
                        return None
                    first = min(oid for oid, _ in p.take_profits)
                    record = await w.rt.positions.tp_order(sid, first)
                    assert record is not None
                    waits.append((record.created_at - p.opened_at).total_seconds())
            return waits if len(waits) == orders else None

        waits = None
        for _ in range(100):
            if waits := await all_covered():
                break
            await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert waits is not None, "not every position got a take-profit"
    assert max(waits) < 1.0, sorted(waits)[-5:]
