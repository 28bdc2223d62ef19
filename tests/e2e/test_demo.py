"""``mmops demo``: a fixed seed prints the same per-pair figures twice in a row, and the session
it leaves is the one ``status`` and ``verify-coverage`` show next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mmops.adapters.postgres import schema

pytestmark = pytest.mark.e2e


def mmops(env: dict[str, str], *args: str) -> Any:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "mmops.entrypoints", *args, "--json"],
        env=full, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def demo(env: dict[str, str]) -> Any:
    return mmops(env, "demo", "--pairs", "4", "--hours", "1.5", "--seed", "11")


def test_the_same_seed_prints_the_same_figures_twice(
    empty_database_url: str, redis_url: str, tmp_path: Path
) -> None:
    schema.upgrade(empty_database_url)
    env = {"MMOPS_DATABASE_URL": empty_database_url, "MMOPS_REDIS_URL": redis_url,
           "MMOPS_DATA_DIR": str(tmp_path)}  # fmt: skip
    try:
        first, second = demo(env), demo(env)
        status = mmops(env, "status")
        coverage = mmops(env, "verify-coverage", "--session", "demo-11")
    finally:
        import redis as sync_redis

        client = sync_redis.Redis.from_url(redis_url)
        for pattern in ("*{demo-11}*", "paper:{demo-11}:*"):
            for key in client.scan_iter(match=pattern.replace("{", "\\{").replace("}", "\\}")):
                client.delete(key)
        client.close()
    assert first["pairs"] == second["pairs"]
    assert first["analysis_query"] == second["analysis_query"]
    assert first["migration"]["complete"] and second["migration"]["complete"]
    assert sum(p["fills"] for p in first["pairs"]) > 0
    assert all(float(p["coverage_percent"]) >= 99 for p in first["pairs"])
    # The session ended now, so it is where a user looks next.
    [row] = [row for row in status["sessions"] if row["session"] == "demo-11"]
    last = row["last_settlement"]
    assert last["state"] == "ok"
    assert all(type(last[count]) is int for count in ("placed", "skipped", "failed"))
    covered = {row["pair"] for row in coverage["pairs"] if row["session"] == "demo-11"}
    assert covered == {p["pair"] for p in first["pairs"]}
    assert coverage["ok"]
