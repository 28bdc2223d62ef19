"""The ``mmops`` CLI as a subprocess: db commands, status, exit codes, bad settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from mmops.adapters.postgres import backup as pg_backup
from mmops.adapters.postgres import schema
from mmops.entrypoints.cli_db import embedded_bin_dir, find_tool
from mmops.errors import ConfigurationError

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
    dump = pg_backup.read_dump_info(path)
    assert dump.dbname == pg_backup.database_name(env["MMOPS_DATABASE_URL"])
    assert dump.major == find_tool("pg_dump").major  # the newest pg_dump wrote it


def test_backup_says_clearly_when_pg_dump_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="pg_dump not found"):
        pg_backup.find_tool("pg_dump", [tmp_path / "no-pg_dump"], path=str(tmp_path))


def add_session(url: str, sid: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (id, status, mode, exchange, started_at)"
            " VALUES (%s, 'ended', 'paper', 'paper', now())",
            (sid,),
        )


def session_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM sessions")}


def take_backup(env: dict[str, str], out: Path) -> Path:
    result = run(env, "db", "backup", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    return Path(json.loads(result.stdout)["backup"])


def applied(env: dict[str, str]) -> list[bool]:
    result = run(env, "db", "status", "--json")
    assert result.returncode == 0, result.stderr
    return [s["applied"] for s in json.loads(result.stdout)]


def test_restore_brings_back_the_data_and_the_migration_state(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = env["MMOPS_DATABASE_URL"]
    assert run(env, "db", "upgrade").returncode == 0
    add_session(url, "kept")
    dump = take_backup(env, tmp_path / "bk")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM sessions")
    add_session(url, "after-the-backup")
    down = run(env, "db", "downgrade", "--to", "002-add-symbol-indexes", "--yes")
    assert down.returncode == 0, down.stderr
    assert applied(env)[-1] is False

    result = run(env, "db", "restore", str(dump), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["schema_current"] is True
    assert session_ids(url) == {"kept"}
    assert applied(env) == [True] * len(schema.migration_ids())
    assert "up to date" in run(env, "db", "upgrade").stdout
    verify = run(env, "db", "verify")
    assert verify.returncode == 0, verify.stderr


def test_restoring_an_older_schema_leaves_its_migrations_to_upgrade(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A backup taken before an upgrade (as a deploy takes it) restores the schema it had."""
    url = env["MMOPS_DATABASE_URL"]
    assert run(env, "db", "upgrade").returncode == 0
    assert run(env, "db", "downgrade", "--yes").returncode == 0  # the newest migration
    add_session(url, "before-upgrade")
    dump = take_backup(env, tmp_path / "bk")
    assert run(env, "db", "upgrade").returncode == 0

    result = run(env, "db", "restore", str(dump), "--yes")
    assert result.returncode == 0, result.stderr
    assert "mmops db upgrade" in result.stdout
    assert applied(env) == [True] * (len(schema.migration_ids()) - 1) + [False]
    again = run(env, "db", "upgrade", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["applied"] == [schema.latest_id()]
    assert session_ids(url) == {"before-upgrade"}


def test_restore_without_yes_refuses_and_changes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = env["MMOPS_DATABASE_URL"]
    assert run(env, "db", "upgrade").returncode == 0
    add_session(url, "kept")
    dump = take_backup(env, tmp_path / "bk")
    add_session(url, "after-the-backup")

    refused = run(env, "db", "restore", str(dump))
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert session_ids(url) == {"kept", "after-the-backup"}


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("missing.dump", None, "no such file"),
        ("garbage.dump", b"not a backup at all\n", "not a pg_dump custom-format archive"),
        ("empty.dump", b"", "not a pg_dump custom-format archive"),
        ("truncated.dump", b"PGDMP\x01\x0f\x00\x04\x08\x01\x01", "header truncated"),
        ("tar.dump", b"PGDMP\x01\x0f\x00\x04\x08\x03\x01" + bytes(80), "not the custom"),
    ],
)
def test_restore_of_a_file_that_is_no_backup_says_so_on_one_line(
    env: dict[str, str], tmp_path: Path, name: str, content: bytes | None, says: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    result = run(env, "db", "restore", str(path), "--yes")
    assert result.returncode == 2
    assert says in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_failed_restore_exits_1_on_one_line_and_changes_nothing(
    env: dict[str, str], tmp_path: Path
) -> None:
    url = env["MMOPS_DATABASE_URL"]
    assert run(env, "db", "upgrade").returncode == 0
    dump = take_backup(env, tmp_path / "bk")
    add_session(url, "after-the-backup")
    with psycopg.connect(url, autocommit=True) as conn:  # --clean cannot drop sessions now
        conn.execute("CREATE VIEW session_names AS SELECT id FROM sessions")

    result = run(env, "db", "restore", str(dump), "--yes")
    assert result.returncode == 1
    assert "pg_restore failed" in result.stderr and "session_names" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert session_ids(url) == {"after-the-backup"}

    cut = tmp_path / "cut.dump"
    cut.write_bytes(dump.read_bytes()[:3000])  # a good header, then nothing
    result = run(env, "db", "restore", str(cut), "--yes")
    assert result.returncode == 1
    assert "pg_restore failed" in result.stderr and "Traceback" not in result.stderr
    assert session_ids(url) == {"after-the-backup"}


def test_restore_keeps_the_password_out_of_its_messages(
    env: dict[str, str], tmp_path: Path
) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    dump = take_backup(env, tmp_path / "bk")
    bad = {**env, "MMOPS_DATABASE_URL": "postgresql://postgres:s3cretpw@127.0.0.1:1/x"}
    result = run(bad, "db", "restore", str(dump), "--yes")
    assert result.returncode == 1
    assert "pg_restore failed" in result.stderr
    assert "s3cretpw" not in result.stderr + result.stdout


def test_a_dump_of_the_embedded_servers_pg_dump_restores(
    env: dict[str, str], tmp_path: Path
) -> None:
    """A backup by the embedded server's pg_dump restores, whatever the system's pg_restore."""
    url = env["MMOPS_DATABASE_URL"]
    assert run(env, "db", "upgrade").returncode == 0
    add_session(url, "kept")
    embedded = pg_backup.find_tool("pg_dump", [embedded_bin_dir() / "pg_dump"], path="")
    assert embedded.path.startswith(str(embedded_bin_dir()))
    dump = pg_backup.backup(url, tmp_path / "bk", datetime.now(UTC), embedded)
    assert pg_backup.read_dump_info(dump).major == embedded.major >= 16
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM sessions")

    result = run(env, "db", "restore", str(dump), "--yes", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dumped_by"].startswith(str(embedded.major))
    assert session_ids(url) == {"kept"}
    assert applied(env) == [True] * len(schema.migration_ids())


def test_restore_names_the_pg_restore_a_dump_needs(tmp_path: Path) -> None:
    dump = pg_backup.DumpInfo(dbname="mmops", server_version="16.2", pg_dump_version="16.2")
    old = pg_backup.Tool(path="/usr/bin/pg_restore", major=15)
    with pytest.raises(ConfigurationError, match=r"pg_dump 16\.2.*pg_restore 16 or newer"):
        pg_backup.restore("postgresql://u:pw@h/db", tmp_path / "x.dump", dump, old)
