"""The ``mmops`` CLI as a subprocess: db commands, status, exit codes, bad settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from mmops.adapters.postgres import schema

pytestmark = pytest.mark.e2e

MMOPS = [sys.executable, "-m", "mmops.entrypoints"]


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full_env.update(env)
    return subprocess.run(
        [*MMOPS, *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def env(empty_database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        "MMOPS_DATABASE_URL": empty_database_url,
        "MMOPS_REDIS_URL": redis_url,
        "MMOPS_DATA_DIR": str(tmp_path / "data"),
    }


def test_upgrade_downgrade_to_zero_upgrade(env: dict[str, str]) -> None:
    up = run(env, "db", "upgrade", "--json")
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["applied"] == schema.migration_ids()

    refused = run(env, "db", "downgrade", "--to", "zero")
    assert refused.returncode == 2
    assert "--yes" in refused.stderr

    down = run(env, "db", "downgrade", "--to", "zero", "--yes", "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["rolled_back"] == schema.migration_ids()[::-1]
    status = json.loads(run(env, "db", "status", "--json").stdout)
    assert [s["applied"] for s in status] == [False] * len(schema.migration_ids())

    again = run(env, "db", "upgrade")
    assert again.returncode == 0, again.stderr
    assert schema.latest_id() in again.stdout


def test_verify_exits_non_zero_naming_each_problem(env: dict[str, str]) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    clean = run(env, "db", "verify")
    assert clean.returncode == 0, clean.stderr
    with psycopg.connect(env["MMOPS_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (id, status, mode, exchange, started_at, pairs, pair_count)"
            " VALUES ('s1', 'ended', 'paper', 'paper', now(), '[\"BTC/USD\"]', 2)"
        )
        conn.execute(
            "INSERT INTO orders (session_id, order_id, symbol, side, price, amount, status,"
            " created_at) VALUES ('nobody', 'o1', 'BTC/USD', 'buy', 1, 1, 'open', now())"
        )
    found = run(env, "db", "verify")
    assert found.returncode == 1
    assert "pair_count_mismatch" in found.stderr and "s1" in found.stderr
    assert "orphan_orders" in found.stderr and "nobody/o1" in found.stderr


def test_verify_refuses_an_unmigrated_database(env: dict[str, str]) -> None:
    result = run(env, "db", "verify")
    assert result.returncode == 2
    assert "mmops db upgrade" in result.stderr


def test_bad_setting_exits_2_naming_the_variable(env: dict[str, str]) -> None:
    result = run({**env, "MMOPS_SETTLEMENT_INTERVAL": "abc"}, "status")
    assert result.returncode == 2
    assert "MMOPS_SETTLEMENT_INTERVAL" in result.stderr


def test_status_json_after_upgrade(env: dict[str, str]) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    result = run(env, "status", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"sessions": []}


def test_unreachable_database_names_postgresql(env: dict[str, str]) -> None:
    bad = {**env, "MMOPS_DATABASE_URL": "postgresql://postgres:s3cretpw@127.0.0.1:1/x"}
    result = run(bad, "db", "status")
    assert result.returncode == 1
    assert "PostgreSQL is unavailable" in result.stderr
    assert "s3cretpw" not in result.stderr + result.stdout


def test_backup_writes_a_timestamped_custom_format_dump(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    result = run(env, "db", "backup", "--out", str(tmp_path / "bk"), "--json")
    assert result.returncode == 0, result.stderr
    path = Path(json.loads(result.stdout)["backup"])
    assert path.parent == tmp_path / "bk"
    assert path.name.startswith("mmops-") and path.name.endswith("Z.dump")
    assert path.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format


def test_backup_says_clearly_when_pg_dump_is_missing(tmp_path: Path) -> None:
    from mmops.adapters.postgres.backup import find_pg_dump
    from mmops.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="pg_dump not found"):
        find_pg_dump([tmp_path / "no-pg_dump"], path=str(tmp_path))
