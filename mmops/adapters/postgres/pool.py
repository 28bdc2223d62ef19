"""The psycopg 3 async connection pool, and psycopg errors mapped once into mmops.errors."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from mmops.errors import IntegrityError, StoreUnavailable, TemporaryError


def create_pool(database_url: str, max_size: int = 10) -> AsyncConnectionPool:
    """A closed pool; open it with ``await pool.open(wait=True, timeout=...)``."""
    return AsyncConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=10,
        kwargs={"connect_timeout": 5},
        name="mmops",
    )


async def open_pool(pool: AsyncConnectionPool, timeout: float = 10) -> None:
    """Open the pool, waiting for one connection; StoreUnavailable if PostgreSQL won't answer."""
    try:
        await pool.open(wait=True, timeout=timeout)
    except (PoolTimeout, psycopg.OperationalError) as e:
        await pool.close()
        raise StoreUnavailable("PostgreSQL", f"no connection within {timeout:g}s ({e})") from None


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
        raise StoreUnavailable("PostgreSQL", _first(e)) from e
    except psycopg.Error as e:
        raise IntegrityError(f"PostgreSQL error: {type(e).__name__}: {_first(e)}") from e


def _first(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
