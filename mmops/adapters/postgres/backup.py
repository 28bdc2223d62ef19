"""``mmops db backup``: a ``pg_dump -Fc`` file with a timestamped name.

The password never goes on the command line (where ``ps`` would show it): it is passed to
pg_dump in ``PGPASSWORD``, and the URL handed over has it removed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mmops.errors import ConfigurationError, OperationalError


def find_pg_dump(extra: Sequence[Path] = (), path: str | None = None) -> str:
    """The newest pg_dump among the one on PATH and ``extra`` (e.g. the embedded server's).

    pg_dump refuses servers newer than itself and dumps older ones, so the newest is the safe
    choice. Raises ConfigurationError when there is none.
    """
    candidates = [str(p) for p in extra if p.is_file()]
    on_path = shutil.which("pg_dump", path=path)
    if on_path is not None:
        candidates.append(on_path)
    if not candidates:
        raise ConfigurationError(
            "pg_dump not found on PATH: install the PostgreSQL client tools "
            "(Debian: apt-get install postgresql-client) to take backups"
        )
    return max(candidates, key=_major_version)


def _major_version(pg_dump: str) -> int:
    """16 for "pg_dump (PostgreSQL) 16.2"; 0 if it cannot say."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [pg_dump, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError:
        return 0
    match = re.search(r"(\d+)(?:\.\d+)?", done.stdout)
    return int(match.group(1)) if match else 0


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
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(
            f"--out {out_dir}: cannot create the directory ({e.strerror})"
        ) from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigurationError(f"--out {out_dir}: the directory is not writable")
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
