"""``mmops db backup``: a ``pg_dump -Fc`` file with a timestamped name.

The password never goes on the command line (where ``ps`` would show it): it is passed to
pg_dump in ``PGPASSWORD``, and the URL handed over has it removed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mmops.errors import ConfigurationError, OperationalError


def find_pg_dump(preferred: Path | None = None) -> str:
    """The pg_dump to use: ``preferred`` (the embedded server's own) if it exists, else PATH."""
    if preferred is not None and preferred.is_file():
        return str(preferred)
    found = shutil.which("pg_dump")
    if found is None:
        raise ConfigurationError(
            "pg_dump not found on PATH: install the PostgreSQL client tools "
            "(Debian: apt-get install postgresql-client) to take backups"
        )
    return found


def backup(
    database_url: str, out_dir: Path, now: datetime, pg_dump: str, timeout: float = 3600
) -> Path:
    """Write ``<out_dir>/mmops-<db>-<UTC time>.dump`` and return its path.

    Raises OperationalError with pg_dump's own message if the dump fails; a partial file is
    removed so a failed backup never looks like a good one.
    """
    params = conninfo_to_dict(database_url)
    password = params.pop("password", None)
    dbname = str(params.get("dbname") or "postgres")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out_dir / f"mmops-{dbname}-{stamp}.dump"
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    command = [pg_dump, "-Fc", "--no-owner", "-f", str(target), make_conninfo("", **params)]
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        target.unlink(missing_ok=True)
        message = done.stderr.strip() or f"exit code {done.returncode}"
        if password:
            message = message.replace(str(password), "***")
        raise OperationalError(f"pg_dump failed: {message}")
    return target
