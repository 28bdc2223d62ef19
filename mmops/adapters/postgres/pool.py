"""The psycopg 3 async connection pool, and psycopg errors mapped once into mmops.errors.

A failed connection attempt is classified here and only here: credentials refused →
StoreAuthenticationFailed, anything else → StoreUnavailable. The pool logs each failed attempt
as one ``postgres.unavailable`` event and remembers the last one, so a caller whose wait for a
connection runs out learns why (``authentication failed: …``) rather than a bare timeout.
psycopg_pool's own warnings (plain stdlib lines) become ``postgres.pool`` events, and its
"error connecting" lines are dropped: ``postgres.unavailable`` already said it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Self

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mmops import logs
from mmops.errors import (
    IntegrityError,
    StoreAuthenticationFailed,
    StoreUnavailable,
    TemporaryError,
)

log = logs.get_logger("mmops.postgres")

STORE = "PostgreSQL"
# libpq's words when the server refuses who we are (it reports no SQLSTATE at connect time):
# "password authentication failed", "Ident/peer/PAM/… authentication failed", "no password
# supplied", "no pg_hba.conf entry for host …", "pg_hba.conf rejects connection …".
_CREDENTIALS_REFUSED = ("authentication failed", "no password supplied", "pg_hba.conf")


class Pool(AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]):
    """psycopg_pool's pool, which also knows why its last connection attempt failed.

    ``getconn`` (and so ``connection``) raises that failure, mapped, when no connection came
    within the timeout; a plain PoolTimeout (every connection busy) is left to
    :func:`pg_errors`.
    """

    def __init__(self, conninfo: str, **kwargs: Any) -> None:
        self._connect_error: psycopg.Error | None = None  # None once an attempt succeeds
        _POOL_LOGGER.addFilter(_POOL_LOG_FILTER)  # idempotent
        super().__init__(conninfo, connection_class=_reporting_connection(self), **kwargs)

    def connect_failure(self) -> StoreUnavailable | None:
        """Why the last connection attempt failed, or None if it succeeded (or none was made)."""
        return None if self._connect_error is None else unavailable(self._connect_error)

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[TupleRow]:
        try:
            return await super().getconn(timeout)
        except PoolTimeout as e:
            failure = self.connect_failure()
            if failure is None:
                raise
            raise failure from e

    def _note_attempt(self, error: psycopg.Error | None) -> None:
        self._connect_error = error


def _reporting_connection(pool: Pool) -> type[psycopg.AsyncConnection[TupleRow]]:
    """The pool's connection class: psycopg's, whose ``connect`` tells ``pool`` how it went."""

    class Connection(psycopg.AsyncConnection[TupleRow]):
        @classmethod
        async def connect(cls, *args: Any, **kwargs: Any) -> Self:
            try:
                conn = await super().connect(*args, **kwargs)
            except psycopg.Error as e:
                pool._note_attempt(e)
                failure = unavailable(e)
                reason = (
                    "authentication_failed"
                    if isinstance(failure, StoreAuthenticationFailed)
                    else "connection_failed"
                )
                log.warning("postgres.unavailable", reason=reason, error=failure.detail)
                raise failure from e
            pool._note_attempt(None)
            return conn

    return Connection


def unavailable(e: psycopg.Error) -> StoreUnavailable:
    """A failed connection attempt as an mmops error: StoreAuthenticationFailed when the server
    refused the credentials (SQLSTATE 28P01 or 28000, or libpq's words for it), else
    StoreUnavailable. libpq's message names the user and server, never the password."""
    text = _first(e)
    refused = isinstance(
        e, psycopg.errors.InvalidPassword | psycopg.errors.InvalidAuthorizationSpecification
    ) or any(words in text.lower() for words in _CREDENTIALS_REFUSED)
    return StoreAuthenticationFailed(STORE, text) if refused else StoreUnavailable(STORE, text)


class _PoolLogs(logging.Filter):
    """psycopg_pool's warnings as structlog events, without its connection failures (the pool's
    connection class reports each as ``postgres.unavailable``: they carry a StoreUnavailable)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if not any(isinstance(a, StoreUnavailable) for a in args):
            log.warning("postgres.pool", message=record.getMessage())
        return False


_POOL_LOGGER = logging.getLogger("psycopg.pool")
_POOL_LOG_FILTER = _PoolLogs()


def create_pool(database_url: str, max_size: int = 10) -> Pool:
    """A closed pool; open it with :func:`open_pool` (or ``await pool.open(wait=False)``)."""
    return Pool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=10,
        kwargs={"connect_timeout": 5},
        name="mmops",
    )


async def open_pool(pool: Pool, timeout: float = 10) -> None:
    """Open the pool, waiting for one connection; StoreUnavailable if PostgreSQL won't answer
    (StoreAuthenticationFailed if it refused the credentials)."""
    try:
        await pool.open(wait=True, timeout=timeout)
    except (PoolTimeout, psycopg.OperationalError) as e:
        failure = pool.connect_failure()
        await pool.close()
        if failure is not None:
            raise failure from None
        raise StoreUnavailable(STORE, f"no connection within {timeout:g}s ({e})") from None


async def ping(pool: AsyncConnectionPool, timeout: float) -> None:
    """One round trip to PostgreSQL; StoreUnavailable (StoreAuthenticationFailed if the
    credentials were refused) when it does not answer within ``timeout`` seconds."""
    async with pg_errors(), pool.connection(timeout=timeout) as conn:
        await conn.execute("SELECT 1")


@contextlib.asynccontextmanager
async def pg_errors() -> AsyncIterator[None]:
    """Map psycopg errors once: a deadlock or serialization failure is temporary (the
    transaction rolled back; try again), a lost or refused connection is StoreUnavailable, any
    other database error an IntegrityError (stop and alert: mmops did something it should not).
    """
    try:
        yield
    except psycopg.errors.TransactionRollback as e:
        raise TemporaryError(f"PostgreSQL rolled the transaction back: {_first(e)}") from e
    except (psycopg.OperationalError, PoolTimeout) as e:
        raise StoreUnavailable(STORE, _first(e)) from e
    except psycopg.Error as e:
        raise IntegrityError(f"PostgreSQL error: {type(e).__name__}: {_first(e)}") from e


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
