"""The one composition root: settings → servers → adapters → services.

Nothing else in mmops opens a connection or reads the environment. :func:`resolve_urls` decides
between the configured servers and the embedded ones (and says so in one log line);
:func:`open_runtime` opens the Redis client and the PostgreSQL pool in one place and closes them
in one place.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from mmops import logs
from mmops.adapters.clock import SystemClock
from mmops.adapters.embedded import EmbeddedServers
from mmops.adapters.postgres.pool import create_pool, open_pool
from mmops.adapters.postgres.sessions import SessionRepository
from mmops.adapters.redis.client import Redis, create_client, redis_errors
from mmops.adapters.redis.store import FillStore, OrderStore, PositionStore, SessionStore
from mmops.config import Settings, redact_url
from mmops.services.sessions import SessionRegistry

log = logs.get_logger("mmops.bootstrap")


@dataclass(frozen=True, slots=True)
class Urls:
    redis: str
    database: str


def resolve_urls(settings: Settings, embedded: EmbeddedServers) -> Urls:
    """The configured URLs, or those of embedded servers started under the data dir."""
    return Urls(redis_url(settings, embedded), database_url(settings, embedded))


def redis_url(settings: Settings, embedded: EmbeddedServers) -> str:
    if settings.redis_url is not None:
        return settings.redis_url.get_secret_value()
    url = embedded.redis_url()
    log.info("embedded.redis", data_dir=str(embedded.data_dir.resolve()))
    return url


def database_url(settings: Settings, embedded: EmbeddedServers) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    url = embedded.database_url()
    log.info("embedded.postgres", data_dir=str(embedded.data_dir.resolve()))
    return url


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a command needs, built once."""

    settings: Settings
    urls: Urls
    redis: Redis
    pool: AsyncConnectionPool
    sessions: SessionStore
    orders: OrderStore
    fills: FillStore
    positions: PositionStore
    session_records: SessionRepository
    registry: SessionRegistry
    clock: SystemClock


@redis_errors
async def _ping(redis: Redis) -> None:
    await redis.ping()


@contextlib.asynccontextmanager
async def open_runtime(settings: Settings, urls: Urls) -> AsyncIterator[Runtime]:
    """Open Redis and PostgreSQL, check both answer, and close both on exit.

    Raises StoreUnavailable naming the server that does not answer.
    """
    redis = create_client(urls.redis)
    pool = create_pool(urls.database, settings.db_pool_max_size)
    try:
        await _ping(redis)
        await open_pool(pool)
        log.debug("runtime.opened", redis=redact_url(urls.redis))
        sessions = SessionStore(redis)
        records = SessionRepository(pool)
        yield Runtime(
            settings=settings,
            urls=urls,
            redis=redis,
            pool=pool,
            sessions=sessions,
            orders=OrderStore(redis),
            fills=FillStore(redis),
            positions=PositionStore(redis),
            session_records=records,
            registry=SessionRegistry(sessions, records),
            clock=SystemClock(),
        )
    finally:
        await pool.close()
        await redis.aclose()


def configure_logging(settings: Settings) -> None:
    logs.register_secrets(settings.secrets())
    logs.configure(settings.log_level, settings.log_format)
