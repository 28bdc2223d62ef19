"""A market maker that is not mmops (tests/e2e/external_mm.py, a separate process using redis-py
only) feeds mmops through the ingest stream while the ingest consumer runs; the session, its
fills and the quarantined message end up where docs/INGEST.md says, and ``mmops migrate``
verifies the session."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
    """Every message of the stream delivered to the group and acknowledged."""
    groups = await w.rt.redis.xinfo_groups(w.rt.settings.ingest_stream)
    [group] = [g for g in groups if g["name"] == keys.INGEST_GROUP]
    return bool(group["pending"] == 0 and group["lag"] == 0)


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
