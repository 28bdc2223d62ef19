"""``mmops serve`` as a process: schedules run, endpoints answer, alerts reach a real receiver,
SIGTERM ends it cleanly, and no secret leaks anywhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmops.adapters.postgres import schema
from tests.integration.world import World, world

pytestmark = pytest.mark.e2e

SECRET_KEY = "key-NEVER-PRINT-1234"
SECRET = "c2VjcmV0LU5FVkVSLVBSSU5U"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def w(redis_url: str, empty_database_url: str) -> AsyncIterator[World]:
    """A database of the test's own: the daemon migrates every pending session it finds."""
    schema.upgrade(empty_database_url)
    async with world(redis_url, empty_database_url) as w:
        yield w


@contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full.update(env, MMOPS_HTTP_PORT=str(port))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmops.entrypoints", "serve"], env=full, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            yield proc, f"http://127.0.0.1:{port}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def wait_for(check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, AssertionError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout} s: {check}")


def base_env(w: World, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "MMOPS_REDIS_URL": w.rt.urls.redis,
        "MMOPS_DATABASE_URL": w.rt.urls.database,
        "MMOPS_DATA_DIR": str(tmp_path),
        "MMOPS_PAPER_VENUE": w.exchange.venue,
        "MMOPS_SETTLEMENT_INTERVAL": "1",
        "MMOPS_MIGRATION_INTERVAL": "2",
        "MMOPS_SHUTDOWN_GRACE": "10",
        "MMOPS_LOG_FORMAT": "json",
        "MMOPS_API_KEY": SECRET_KEY,
        "MMOPS_API_SECRET": SECRET,
        **extra,
    }


async def test_serve_runs_the_schedules_answers_and_stops_cleanly(w: World, tmp_path: Path) -> None:
    sid = await w.start_session(["BTC/USD", "ETH/USD"], capital=Decimal(5000))
    for pair in ("BTC/USD", "ETH/USD"):
        await w.seed_positions(sid, pair, [5, 10, 15])
    await w.rt.registry.end(sid, w.rt.clock.now())
    log = tmp_path / "serve.log"
    with serve(base_env(w, tmp_path), log) as (proc, url):
        health = wait_for(lambda: httpx.get(f"{url}/healthz").json())
        assert health == {"status": "ok", "scheduler": "running"}
        assert wait_for(lambda: httpx.get(f"{url}/readyz").json()) == {"ready": True}

        def migrated() -> bool:
            rows = httpx.get(f"{url}/status").json()["sessions"]
            mine = [r for r in rows if r["session"] == sid]
            return bool(mine and mine[0]["migration_completed_at"]
                        and mine[0]["last_settlement"]["state"] == "ok")  # fmt: skip

        wait_for(migrated)
        families = {
            f.name: f for f in text_string_to_metric_families(httpx.get(f"{url}/metrics").text)
        }
        runs = {s.labels["job"]: s.value for s in families["mmops_job_runs"].samples
                if s.name == "mmops_job_runs_total"}  # fmt: skip
        assert runs["settlement"] >= 1 and runs["migration"] >= 1
        assert "mmops_job_duration_seconds" in families
        placed = sum(s.value for s in families["mmops_tp_placed"].samples
                     if s.name == "mmops_tp_placed_total")  # fmt: skip
        assert placed == 6
        coverage = {s.labels["pair"]: s.value for s in families["mmops_coverage_percent"].samples
                    if s.labels.get("session") == sid}  # fmt: skip
        assert coverage == {"BTC/USD": 100.0, "ETH/USD": 100.0}
        assert httpx.get(url).status_code == 200
        texts = [httpx.get(f"{url}{p}").text for p in ("/status", "/metrics", "/readyz", "/")]

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert time.monotonic() - started < 10 + 5
    assert await w.rt.redis.get(f"lock:settlement:{{{sid}}}") is None
    output = log.read_text()
    for text in [*texts, output]:
        assert SECRET_KEY not in text and SECRET not in text


async def test_readyz_is_503_naming_postgresql_when_the_database_is_unreachable(
    w: World, tmp_path: Path
) -> None:
    bad = "postgresql://mmops:db-PASSWORD-99@127.0.0.1:1/nothing?connect_timeout=1"
    log = tmp_path / "serve.log"
    with serve(base_env(w, tmp_path, MMOPS_DATABASE_URL=bad), log) as (proc, url):
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200)
        response = httpx.get(f"{url}/readyz", timeout=20)
        assert response.status_code == 503
        reasons = response.json()["reasons"]
        assert any("PostgreSQL" in r for r in reasons)
        texts = [response.text, httpx.get(f"{url}/metrics").text, httpx.get(f"{url}/status").text]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    for text in [*texts, log.read_text()]:
        assert "db-PASSWORD-99" not in text


class Receiver:
    """A webhook receiver on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                received.append(json.loads(self.rfile.read(length) or b"{}"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_one_alert_when_settlement_starts_failing_and_one_when_it_recovers(
    w: World, tmp_path: Path
) -> None:
    sid = await w.start_session(["SOL/USD"])
    await w.seed_positions(sid, "SOL/USD", [5])
    receiver = Receiver()
    try:
        env = base_env(w, tmp_path, MMOPS_ALERT_URLS=f"json://127.0.0.1:{receiver.port}/hook",
                       MMOPS_MIGRATION_INTERVAL="3600")  # fmt: skip
        with serve(env, tmp_path / "serve.log") as (proc, url):
            wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200)
            await w.exchange.set_down(True)
            await asyncio.to_thread(wait_for, lambda: len(receiver.bodies) >= 1)
            await asyncio.sleep(3)  # several more failing runs: still one alert
            await w.exchange.set_down(False)
            await asyncio.to_thread(wait_for, lambda: len(receiver.bodies) >= 2)
            await asyncio.sleep(3)  # several more good runs: nothing more
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    finally:
        await w.exchange.set_down(False)
        receiver.close()
    titles = [b["title"] for b in receiver.bodies]
    failed = [t for t in titles if "settlement_failed" in t]
    assert failed == ["mmops: settlement_failed", "mmops: settlement_failed resolved"], titles
    # The outage outlasted two settlement intervals, so staleness may have been raised and
    # cleared too; every condition still alerts once when it starts and once when it clears.
    assert all(n == 1 for n in Counter(titles).values()), titles
    assert set(titles) - set(failed) <= {
        "mmops: settlement_stale",
        "mmops: settlement_stale resolved",
    }
    assert "down" in receiver.bodies[0]["message"]
    assert all(SECRET not in json.dumps(b) for b in receiver.bodies)
