"""Versioned schema migrations, applied and rolled back by yoyo-migrations.

The SQL lives in ``migrations/`` beside this module, one file per version with a
``.rollback.sql`` twin. yoyo keeps what was applied in its own tables and takes a lock, so two
deploys never migrate at once. These functions are synchronous (yoyo is); the CLI calls them
directly and async callers run them in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from yoyo import get_backend, read_migrations
from yoyo.exceptions import LockTimeout

from mmops.adapters.postgres.pool import unavailable
from mmops.config import redact_url
from mmops.errors import ConfigurationError, OperationalError

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
ZERO = "zero"  # downgrade target meaning "roll back everything"


@dataclass(frozen=True, slots=True)
class MigrationState:
    id: str
    applied: bool


def _yoyo_url(database_url: str) -> str:
    scheme, sep, rest = database_url.partition("://")
    if not sep or scheme not in {"postgres", "postgresql", "postgresql+psycopg"}:
        raise ConfigurationError(
            f"MMOPS_DATABASE_URL: expected postgresql://..., got {redact_url(database_url)}"
        )
    return f"postgresql+psycopg://{rest}"


def _backend(database_url: str) -> Any:
    try:
        return get_backend(_yoyo_url(database_url))
    except psycopg.OperationalError as e:
        raise unavailable(e) from None


def _lock_held() -> OperationalError:
    return OperationalError(
        "another process holds the schema migration lock (yoyo_lock); wait for it, or if no "
        "deploy is running, see docs/TROUBLESHOOTING.md (schema lock)"
    )


def migration_ids() -> list[str]:
    """Every known migration id, oldest first."""
    return [m.id for m in read_migrations(str(MIGRATIONS_DIR))]


def latest_id() -> str:
    return migration_ids()[-1]


def status(database_url: str) -> list[MigrationState]:
    backend = _backend(database_url)
    try:
        applied = set(backend.get_applied_migration_hashes())
        return [
            MigrationState(m.id, m.hash in applied) for m in read_migrations(str(MIGRATIONS_DIR))
        ]
    finally:
        backend.connection.close()


def is_current(database_url: str) -> bool:
    """True when every known migration is applied."""
    return all(state.applied for state in status(database_url))


def upgrade(database_url: str) -> list[str]:
    """Apply every pending migration, in order; return the ids applied."""
    backend = _backend(database_url)
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            pending = backend.to_apply(migrations)
            backend.apply_migrations(pending)
        return [m.id for m in pending]
    except LockTimeout:
        raise _lock_held() from None
    except psycopg.OperationalError as e:
        raise unavailable(e) from None
    finally:
        backend.connection.close()


def downgrade(database_url: str, to: str | None = None) -> list[str]:
    """Roll back the newest applied migration, or all those after ``to`` (``zero`` = all).

    Returns the ids rolled back, newest first. Raises ConfigurationError for an unknown target.
    """
    ids = migration_ids()
    if to is not None and to != ZERO and to not in ids:
        raise ConfigurationError(f"unknown migration {to!r}; known: {', '.join(ids)} or {ZERO}")
    backend = _backend(database_url)
    try:
        migrations = read_migrations(str(MIGRATIONS_DIR))
        with backend.lock():
            applied = backend.to_rollback(migrations)  # newest first
            if to is None:
                chosen = list(applied)[:1]
            else:
                keep = set() if to == ZERO else set(ids[: ids.index(to) + 1])
                chosen = [m for m in applied if m.id not in keep]
            backend.rollback_migrations(migrations.__class__(chosen))
        return [m.id for m in chosen]
    except LockTimeout:
        raise _lock_held() from None
    except psycopg.OperationalError as e:
        raise unavailable(e) from None
    finally:
        backend.connection.close()
