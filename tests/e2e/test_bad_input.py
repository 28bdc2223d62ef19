"""Every configuration mistake exits 2 with one line naming the variable or file, no traceback,
and nothing started or written first; an unknown ``--session`` gets one answer everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.world import World, world

pytestmark = pytest.mark.e2e

MMOPS = [sys.executable, "-m", "mmops.entrypoints"]


def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in ``cwd`` with only ``env`` of the MMOPS_* variables (so, by default, embedded
    servers under ``cwd/.mmops``: the directory that must not appear when a setting is bad)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full_env.update(env)
    return subprocess.run(
        [*MMOPS, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


BAD_SETTINGS = [
    ("status", "MMOPS_TP_TIERS", "garbage"),
    ("status", "MMOPS_PAPER_FAULTS", "garbage"),
    ("settle", "MMOPS_EXCHANGE", "nosuchexchange"),
    ("status", "MMOPS_REDIS_URL", "notaurl"),
    ("migrate", "MMOPS_DATABASE_URL", "notaurl"),
    ("settle", "MMOPS_TP_TIERS_BY_PAIR", '{"FOO/BAR": {"0": "0.01"}}'),
    ("settle", "MMOPS_TP_RESERVE", '{"BTC": "-1"}'),
    ("status", "MMOPS_TP_RESERVE", '{"BTC": "NaN"}'),
    ("status", "MMOPS_ALERT_URLS", "notanurl"),
]


def assert_refused(done: subprocess.CompletedProcess[str], named: str, cwd: Path) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "Traceback" not in output, output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output  # one line for one mistake
    assert named in lines[0], output
    assert not (cwd / ".mmops").exists(), "servers were started before the refusal"


@pytest.mark.parametrize(("command", "variable", "value"), BAD_SETTINGS)
def test_a_bad_setting_is_refused_before_anything_starts(
    tmp_path: Path, command: str, variable: str, value: str
) -> None:
    done = run(tmp_path, {variable: value}, command)
    assert_refused(done, variable, tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing written at all


@pytest.mark.parametrize(
    ("content", "what"),
    [("a = [\n", "not valid TOML"), ('tp_tiers = "x"\n', "MMOPS_TP_TIERS")],
)
def test_a_bad_config_file_is_named(tmp_path: Path, content: str, what: str) -> None:
    config = tmp_path / "mmops.toml"
    config.write_text(content)
    done = run(tmp_path, {}, "--config", str(config), "status")
    assert_refused(done, what, tmp_path)
    if what == "not valid TOML":
        assert "mmops.toml" in done.stderr


def test_a_missing_config_file_is_named(tmp_path: Path) -> None:
    done = run(tmp_path, {"MMOPS_CONFIG_FILE": str(tmp_path / "absent.toml")}, "status")
    assert_refused(done, "absent.toml", tmp_path)


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


@pytest.mark.parametrize("command", ["settle", "verify-coverage", "migrate"])
async def test_an_unknown_session_gets_the_same_answer_from_every_command(
    w: World, tmp_path: Path, command: str
) -> None:
    env = {
        "MMOPS_REDIS_URL": w.rt.urls.redis,
        "MMOPS_DATABASE_URL": w.rt.urls.database,
        "MMOPS_PAPER_VENUE": w.exchange.venue,
    }
    done = run(tmp_path, env, command, "--session", "no-such-session")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith("no session 'no-such-session' in Redis or PostgreSQL")
