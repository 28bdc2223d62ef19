"""``mmops serve`` as a process: schedules run, endpoints answer, alerts reach a real receiver,
SIGTERM ends it cleanly, a bad address or database password is said plainly, and no secret leaks
anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mmops.adapters.postgres import schema
from tests.integration.world import World, world
from tests.kraken_server import KrakenServer

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


def events(lines: list[str]) -> list[dict[str, Any]]:
    """The structlog events among log lines (MMOPS_LOG_FORMAT=json); other lines are skipped."""
    parsed = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            parsed.append(json.loads(line))
    return parsed


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


def test_serve_on_an_address_in_use_exits_2_with_one_line_before_starting_anything(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
        env.update(MMOPS_HTTP_HOST="127.0.0.1", MMOPS_HTTP_PORT=str(port),
                   MMOPS_DATA_DIR=str(tmp_path / "data"), MMOPS_LOG_FORMAT="json")  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "mmops.entrypoints", "serve"], env=env, capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert f"127.0.0.1:{port}" in lines[0] and "in use" in lines[0]
    assert "MMOPS_HTTP_PORT" in lines[0] and "MMOPS_HTTP_HOST" in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()  # no embedded server started, so no job either


class PasswordPostgres:
    """A PostgreSQL of the test's own that checks passwords (scram-sha-256) for role ``mmops``.

    pgserver's bundled binaries (so it runs where no machine server does, and as root too), its
    cluster made with trust; pg_hba.conf is then rewritten so only ``postgres`` is trusted."""

    PASSWORD = "right-PG-pass-4242"

    def __init__(self, directory: Path) -> None:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            import pgserver

        get_server = pgserver.get_server  # type: ignore[attr-defined]
        self.server = get_server(directory, cleanup_mode="delete")
        self.log = Path(self.server.pgdata) / "log"
        admin = self.server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE mmops LOGIN PASSWORD '{self.PASSWORD}'")
            hba = Path(str(conn.execute("SHOW hba_file").fetchone()[0]))  # type: ignore[index]
            hba.write_text("local all postgres trust\nlocal all all scram-sha-256\n")
            conn.execute("SELECT pg_reload_conf()")
        self.socket_dir = admin.rsplit("host=", 1)[1]

    def url(self, password: str) -> str:
        return f"postgresql://mmops:{password}@/postgres?host={self.socket_dir}"

    def refused(self) -> int:
        """Connection attempts the server refused for a wrong password so far."""
        return self.log.read_text().count('FATAL:  password authentication failed for user "mmops"')

    def close(self) -> None:
        self.server.cleanup()


@pytest.fixture
def password_postgres() -> Iterator[PasswordPostgres]:
    # Not under pytest's tmp_path: as root, pgserver runs PostgreSQL as the user `pgserver` and
    # opens the path up for it, and any pytest start closes /tmp/pytest-of-* again (mode 700).
    with tempfile.TemporaryDirectory(prefix="mmops-password-pg-") as directory:
        server = PasswordPostgres(Path(directory) / "pg")
        try:
            yield server
        finally:
            server.close()


async def test_a_wrong_database_password_is_said_once_per_attempt_and_by_readyz(
    redis_url: str, password_postgres: PasswordPostgres, tmp_path: Path
) -> None:
    wrong = "wrong-PG-pass-7777"
    with psycopg.connect(password_postgres.url(password_postgres.PASSWORD)):
        pass  # the right password is let in: the refusal below is the password's
    env = {"MMOPS_REDIS_URL": redis_url, "MMOPS_DATABASE_URL": password_postgres.url(wrong),
           "MMOPS_DATA_DIR": str(tmp_path), "MMOPS_LOG_FORMAT": "json",
           "MMOPS_SETTLEMENT_INTERVAL": "60", "MMOPS_MIGRATION_INTERVAL": "60"}  # fmt: skip
    log = tmp_path / "serve.log"
    with serve(env, log) as (proc, url):
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200)
        response = httpx.get(f"{url}/readyz", timeout=20)
        assert response.status_code == 503
        assert any(
            r.startswith("PostgreSQL is unavailable: authentication failed")
            for r in response.json()["reasons"]
        ), response.json()

        before = len(log.read_text().splitlines())
        time.sleep(2)
        window = log.read_text().splitlines()[before:]
        assert len(events(window)) == len(window), window  # events only: no stdlib lines
        attempts = [e for e in events(window) if e["event"] == "postgres.unavailable"]
        assert len(attempts) <= 4, window  # two connection tasks backing off from 1 s, no flood

        # The jobs' first runs fail on the refused password: settlement_failed, not exchange_auth.
        def raised() -> set[str]:
            return {e["condition"] for e in events(log.read_text().splitlines())
                    if e["event"] == "alert.raised"}  # fmt: skip

        wait_for(lambda: "settlement_failed" in raised())
        assert "exchange_auth" not in raised()
        lines = log.read_text().splitlines()
        refused = password_postgres.refused()  # read second: it may count one more in flight
        assert len(events(lines)) == len(lines), lines
        texts = [response.text, httpx.get(f"{url}/metrics").text, httpx.get(f"{url}/status").text]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0

    reported = [e for e in events(lines) if e["event"] == "postgres.unavailable"]
    assert reported and all(e["reason"] == "authentication_failed" for e in reported)
    assert all("password authentication failed" in e["error"] for e in reported)
    # One event per connection attempt the server refused (each task may have one under way).
    assert 0 <= refused - len(reported) <= 2, (refused, len(reported))
    for text in [*texts, log.read_text()]:
        assert wrong not in text and password_postgres.PASSWORD not in text


async def test_a_refused_api_key_raises_exchange_auth(w: World, tmp_path: Path) -> None:
    sid = await w.start_session(["BTC/USD"])
    await w.seed_positions(sid, "BTC/USD", [5])
    log = tmp_path / "serve.log"
    with KrakenServer() as kraken:  # which knows neither SECRET_KEY nor SECRET
        env = base_env(w, tmp_path, MMOPS_EXCHANGE="kraken", MMOPS_EXCHANGE_URL=kraken.url,
                       MMOPS_MIGRATION_INTERVAL="3600")  # fmt: skip
        with serve(env, log) as (proc, _):

            def raised() -> dict[str, str]:
                lines = log.read_text().splitlines()
                return {e["condition"]: e["detail"] for e in events(lines)
                        if e["event"] == "alert.raised"}  # fmt: skip

            wait_for(lambda: "exchange_auth" in raised())
            alerts = raised()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    assert alerts["exchange_auth"].startswith("AuthenticationFailed: ")
    assert "Invalid key" in alerts["exchange_auth"]
    assert "settlement_failed" in alerts
    assert SECRET_KEY not in log.read_text() and SECRET not in log.read_text()


@pytest.mark.parametrize("command", [["status"], ["db", "verify"], ["db", "upgrade"]])
def test_a_refused_password_is_named_as_such_by_every_command(
    redis_url: str, password_postgres: PasswordPostgres, tmp_path: Path, command: list[str]
) -> None:
    """The schema check, `db verify` and the migrations map libpq's refusal the way the pool
    does: one line saying authentication failed, never the password."""
    wrong = "wrong-PG-pass-8888"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    env.update(MMOPS_REDIS_URL=redis_url, MMOPS_DATABASE_URL=password_postgres.url(wrong),
               MMOPS_DATA_DIR=str(tmp_path))  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "mmops.entrypoints", *command], env=env, capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "PostgreSQL is unavailable: authentication failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert wrong not in result.stdout + result.stderr
