"""The whole workflow through the CLI, as processes: sim (simulated clock) → settle → migrate →
the analysis query, on real Redis and PostgreSQL and the paper venue."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from mmops.adapters.paper.state import PaperOrder, VenueKeys
from mmops.adapters.postgres import schema
from mmops.adapters.postgres.analysis import PAIR_PNL

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(empty_database_url: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    schema.upgrade(empty_database_url)
    venue = f"e2e-{uuid.uuid4().hex[:8]}"
    yield {
        "MMOPS_DATABASE_URL": empty_database_url,
        "MMOPS_REDIS_URL": redis_url,
        "MMOPS_DATA_DIR": str(tmp_path),
        "MMOPS_PAPER_VENUE": venue,
        "MMOPS_LOG_LEVEL": "WARNING",
    }
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=VenueKeys(venue).pattern, count=1000):
        client.delete(key)
    for key in client.scan_iter(match="*{e2e-sim-*", count=1000):
        client.delete(key)
    client.close()


def mmops(env: dict[str, str], *args: str) -> Any:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "mmops.entrypoints", *args, "--json"],
        env=full, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"mmops {args} exited {done.returncode}: {done.stderr[-3000:]}"
    return json.loads(done.stdout)


def test_sim_settle_migrate_analyse(env: dict[str, str], redis_url: str) -> None:
    sid = f"e2e-sim-{uuid.uuid4().hex[:8]}"
    sim = mmops(env, "sim", "--simulated", "--hours", "2", "--pairs", "10", "--session", sid)
    assert sim["settlements"] >= 40

    settle = mmops(env, "settle", "--session", sid)
    assert settle["sessions"][0]["state"] == "ok"
    migrate = mmops(env, "migrate", "--session", sid)
    [migrated] = migrate["sessions"]
    assert migrated["verified"] is True, migrated

    coverage = mmops(env, "verify-coverage", "--session", sid, "--min", "99")
    pairs = coverage["pairs"]
    assert len(pairs) == 10
    positions = sum(p["coverable_positions"] for p in pairs)
    assert positions >= 100, positions
    # Every coverable position got its first take-profit within 3 simulated minutes.
    delays = {p["pair"]: p["max_cover_delay_s"] for p in pairs}
    assert all(d is not None and d <= 180 for d in delays.values()), delays

    status = {row["session"]: row for row in mmops(env, "status")["sessions"]}
    assert status[sid]["last_settlement"]["state"] == "ok"
    assert status[sid]["migration_completed_at"] is not None
    assert {c["pair"] for c in status[sid]["coverage"]} == {p["pair"] for p in pairs}

    # Zero duplicate take-profits: no client order id (session, position, generation) twice.
    import redis as sync_redis

    client = sync_redis.Redis.from_url(redis_url, decode_responses=True)
    orders = [PaperOrder.decode(v).order for v in
              client.hgetall(VenueKeys(env["MMOPS_PAPER_VENUE"]).orders).values()]  # fmt: skip
    client.close()
    sells = Counter(o.client_order_id for o in orders if o.side.value == "sell")
    assert sells and max(sells.values()) == 1

    with psycopg.connect(env["MMOPS_DATABASE_URL"]) as conn:
        dupes = conn.execute(
            "SELECT count(*) - count(DISTINCT (order_id, timestamp, price, quantity)) FROM fills"
            " WHERE session_id = %s", (sid,)
        ).fetchone()  # fmt: skip
        assert dupes == (0,)
        stats = conn.execute(
            "SELECT symbol, fills, buy_volume, sell_volume, fees FROM session_pair_stats"
            " WHERE session_id = %s ORDER BY symbol", (sid,)
        ).fetchall()  # fmt: skip
        raw = conn.execute(
            "SELECT symbol, count(*), coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0),"
            " coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0), sum(fee) FROM fills"
            " WHERE session_id = %s GROUP BY symbol ORDER BY symbol", (sid,)
        ).fetchall()  # fmt: skip
        assert stats == raw and len(stats) == 10
        analysis = conn.execute(PAIR_PNL, {"session_id": sid}).fetchall()
        assert [row[0] for row in analysis] == [row[0] for row in stats]
        assert sum(row[2] for row in analysis) == migrated["fills_inserted"]
