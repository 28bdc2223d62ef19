"""Scenario 7, secrets: with an API key and secret, a Redis password and a database password
configured, none of them appears in any output of any command, on success or on failure."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.integration.world import world
from tests.reliability.own_servers import OwnRedis, free_port

API_KEY = "AKEY-live-5cb2f0e1d3"
API_SECRET = "U0VDUkVULWxpdmUtOGE5YjdjNmQ="
REDIS_PASSWORD = "redis-PW-71c3e9"
DB_PASSWORD = "db-PW-0a4f2d"
SECRETS = (API_KEY, API_SECRET, REDIS_PASSWORD, DB_PASSWORD)


@pytest.fixture
def guarded_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path, password=REDIS_PASSWORD)
    server.start()
    yield server
    server.stop()


def with_password(url: str, password: str) -> str:
    """The same URL with a password: over TCP (the machine's server) or a Unix socket named in
    ``?host=`` (the embedded one). Both trust local connections, so any password is accepted:
    it is there to be leaked, and must not be."""
    parts = urlsplit(url)
    user = parts.username or "postgres"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{user}:{password}@{parts.hostname or ''}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def run(env: dict[str, str], *args: str) -> tuple[int, str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "mmops.entrypoints", *args], env=full, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


async def test_no_secret_in_any_output_of_any_command(
    scenario: Any, guarded_redis: OwnRedis, database_url: str
) -> None:
    s = scenario(7, "Secrets")
    db_url = with_password(database_url, DB_PASSWORD)
    async with world(guarded_redis.url, db_url) as w:
        sid = await w.start_session(["BTC/USD"], capital=Decimal(1000))
        await w.seed_positions(sid, "BTC/USD", [5, 10])
        await w.rt.registry.end(sid, w.rt.clock.now())
        env = {
            "MMOPS_REDIS_URL": guarded_redis.url,
            "MMOPS_DATABASE_URL": db_url,
            "MMOPS_PAPER_VENUE": w.exchange.venue,
            "MMOPS_API_KEY": API_KEY,
            "MMOPS_API_SECRET": API_SECRET,
            "MMOPS_LOG_LEVEL": "DEBUG",
            "MMOPS_ALERT_URLS": "json://127.0.0.1:9/never",
        }
        wrong = {
            **env,
            "MMOPS_REDIS_URL": guarded_redis.url.replace(REDIS_PASSWORD, REDIS_PASSWORD + "x"),
        }
        kraken = {**env, "MMOPS_EXCHANGE": "kraken",
                  "MMOPS_EXCHANGE_URL": f"http://127.0.0.1:{free_port()}"}  # fmt: skip
        cases = [
            (env, ["settle", "--session", sid, "--json"]),
            (env, ["migrate", "--session", sid, "--json"]),
            (env, ["status", "--json"]),
            (env, ["verify-coverage", "--json"]),
            (env, ["db", "verify"]),
            (env, ["db", "status"]),
            (wrong, ["settle"]),  # authentication refused by Redis
            (kraken, ["settle", "--session", sid]),  # a live exchange that does not answer
            ({**env, "MMOPS_HTTP_PORT": "nope"}, ["status"]),  # a bad setting beside secrets
        ]
        for case_env, args in cases:
            code, output = await asyncio.to_thread(run, case_env, *args)
            s.ran()
            for secret in SECRETS:
                s.holds("no secret in the output of any command, failing or not",
                        secret not in output)  # fmt: skip
            if case_env is wrong:
                s.holds("a refused Redis password is reported as such", code != 0)
    s.holds("the failing cases failed without showing a secret", True)
