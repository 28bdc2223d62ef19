"""``mmops db backup`` and ``mmops db restore``: ``pg_dump -Fc`` files, and reading them back.

The password never goes on the command line (where ``ps`` would show it): it is passed to
pg_dump and pg_restore in ``PGPASSWORD``, the URL handed over has it removed, and it is masked
in any message they print.

A custom-format archive can be read only by a pg_restore of the same major version as the
pg_dump that wrote it, or newer (PostgreSQL 16 writes archive format 1.15, which pg_restore 15
refuses). The embedded server's binaries (pgserver) are often newer than the system's, so both
tools are taken as the newest among PATH and the directories the caller adds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mmops.adapters.postgres.schema import MIGRATIONS_DIR
from mmops.errors import ConfigurationError, OperationalError

MAGIC = b"PGDMP"
_HEADER_BYTES = 4096  # the header is a few hundred bytes: names and version strings
_MIN_ARCHIVE = (1, 10)  # from this version on the header names the pg_dump that wrote it
_CUSTOM_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Tool:
    """A PostgreSQL client program and its major version (0 when it cannot say)."""

    path: str
    major: int


@dataclass(frozen=True, slots=True)
class DumpInfo:
    """What a custom-format archive's header says about it."""

    dbname: str
    server_version: str  # of the server dumped, e.g. "15.20 (Debian 15.20-0+deb12u1)"
    pg_dump_version: str  # of the pg_dump that wrote it, e.g. "16.2"

    @property
    def major(self) -> int:
        """16 for "16.2" (9 for the 9.x releases: any pg_restore of today reads those)."""
        match = re.match(r"\d+", self.pg_dump_version)
        return int(match.group()) if match else 0


def find_tool(name: str, extra: Sequence[Path] = (), path: str | None = None) -> Tool:
    """The newest ``name`` (pg_dump, pg_restore) among the one on PATH and ``extra``.

    pg_dump refuses servers newer than itself and dumps older ones; pg_restore reads archives
    of its own and older versions: for both the newest is the safe choice. ``path`` replaces
    PATH (for tests). Raises ConfigurationError when there is none.
    """
    candidates = [str(p) for p in extra if p.is_file()]
    on_path = shutil.which(name, path=path)
    if on_path is not None:
        candidates.append(on_path)
    if not candidates:
        raise ConfigurationError(
            f"{name} not found on PATH: install the PostgreSQL client tools "
            "(Debian: apt-get install postgresql-client)"
        )
    return max((Tool(c, _major_version(c)) for c in candidates), key=lambda t: t.major)


def _major_version(program: str) -> int:
    """16 for "pg_dump (PostgreSQL) 16.2"; 0 if it cannot say."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [program, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return 0
    match = re.search(r"(\d+)(?:\.\d+)?", done.stdout)
    return int(match.group(1)) if match else 0


def database_name(database_url: str) -> str:
    return str(conninfo_to_dict(database_url).get("dbname") or "postgres")


def backup(
    database_url: str, out_dir: Path, now: datetime, pg_dump: Tool, timeout: float = 3600
) -> Path:
    """Write ``<out_dir>/mmops-<db>-<UTC time>.dump`` and return its path.

    Raises OperationalError with pg_dump's own message if the dump fails; a partial file is
    removed so a failed backup never looks like a good one.
    """
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigurationError(
            f"--out {out_dir}: cannot create the directory ({e.strerror})"
        ) from None
    if not os.access(out_dir, os.W_OK):
        raise ConfigurationError(f"--out {out_dir}: the directory is not writable")
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out_dir / f"mmops-{database_name(database_url)}-{stamp}.dump"
    try:
        _run(pg_dump, ["-Fc", "--no-owner", "-f", str(target)], database_url, timeout)
    except OperationalError:
        target.unlink(missing_ok=True)
        raise
    return target


def read_dump_info(file: Path) -> DumpInfo:
    """Read the header of a ``pg_dump -Fc`` file (no pg_restore needed, whatever its version).

    Raises ConfigurationError when the file is missing, unreadable, or not such an archive.
    """
    try:
        with file.open("rb") as f:
            head = f.read(_HEADER_BYTES)
    except FileNotFoundError:
        raise ConfigurationError(f"{file}: no such file") from None
    except IsADirectoryError:
        raise ConfigurationError(
            f"{file} is a directory; expected a file written by `mmops db backup`"
        ) from None
    except OSError as e:
        raise ConfigurationError(f"{file}: cannot read it ({e.strerror})") from None
    if not head.startswith(MAGIC):
        raise ConfigurationError(
            f"{file} is not a pg_dump custom-format archive (a file written by `mmops db backup`)"
        )
    try:
        return _parse_header(head)
    except (IndexError, ValueError) as e:
        raise ConfigurationError(
            f"{file}: cannot read it as a pg_dump custom-format archive ({e})"
        ) from None


def _parse_header(head: bytes) -> DumpInfo:
    """The fields of PostgreSQL's ``ReadHead`` (pg_backup_archiver.c) up to the pg_dump version.

    Raises IndexError on a truncated header and ValueError on one it does not support.
    """
    if len(head) < 11:
        raise IndexError("header truncated")
    version = (head[5], head[6])  # after the magic: major, minor, revision of the format
    int_size, fmt = head[8], head[10]  # then the sizes of integers and offsets, the format
    if version < _MIN_ARCHIVE:
        raise ValueError(f"archive version {version[0]}.{version[1]} is too old")
    if fmt != _CUSTOM_FORMAT:
        raise ValueError(f"format {fmt} is not the custom format (-Fc)")
    if not 1 <= int_size <= 8:
        raise ValueError(f"integer size {int_size}")
    reader = _HeaderReader(head, pos=11, int_size=int_size)
    if version >= (1, 15):
        reader.skip(1)  # the compression algorithm
    else:
        reader.read_int()  # the compression level
    for _ in range(7):  # the creation time: sec, min, hour, day, month, year, isdst
        reader.read_int()
    return DumpInfo(
        dbname=reader.read_str(),
        server_version=reader.read_str(),
        pg_dump_version=reader.read_str(),
    )


@dataclass(slots=True)
class _HeaderReader:
    """pg_dump's ``ReadInt``/``ReadStr`` over the first bytes of an archive."""

    head: bytes
    pos: int
    int_size: int

    def skip(self, n: int) -> bytes:
        """The next ``n`` bytes; raises IndexError past the end."""
        if self.pos + n > len(self.head):
            raise IndexError("header truncated")
        chunk = self.head[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def read_int(self) -> int:
        """A sign byte, then ``int_size`` bytes, least significant first."""
        sign = self.skip(1)[0]
        value = int.from_bytes(self.skip(self.int_size), "little")
        return -value if sign else value

    def read_str(self) -> str:
        """A length, then as many bytes (a negative length: no string)."""
        length = self.read_int()
        return self.skip(length).decode("utf-8", "replace") if length >= 0 else ""


def restore(
    database_url: str, file: Path, dump: DumpInfo, pg_restore: Tool, timeout: float = 3600
) -> None:
    """Replace the objects of ``dump`` in the database with the archive's, data included.

    One transaction (``--single-transaction``, which stops at the first error): a restore
    that fails changes nothing. ``--clean --if-exists`` drops each object of the archive
    before recreating it, so the yoyo bookkeeping comes back with the tables it describes;
    then the tables of migrations newer than the archive are dropped (the restored
    bookkeeping says they were never applied); other objects are left alone.
    ``--no-owner``: everything belongs to the role of the URL. Raises ConfigurationError
    when ``pg_restore`` is too old for the file, OperationalError with pg_restore's message
    when the restore fails.
    """
    if pg_restore.major < dump.major:
        raise ConfigurationError(
            f"{file} was written by pg_dump {dump.pg_dump_version}: reading it needs "
            f"pg_restore {dump.major} or newer, and the newest found is "
            f"{pg_restore.major or 'of unknown version'} ({pg_restore.path}); install "
            f"postgresql-client-{dump.major} or newer"
        )
    options = ["--clean", "--if-exists", "--no-owner", "--single-transaction"]
    _run(pg_restore, [*options, "-d"], database_url, timeout, after=[str(file)])
    _drop_newer_tables(database_url, file, pg_restore)


def _drop_newer_tables(database_url: str, file: Path, pg_restore: Tool) -> None:
    """Drop the tables of mmops migrations newer than the archive (an older backup restored
    over an upgraded schema): ``--clean`` leaves objects the archive does not hold, and the
    restored migration state says they do not exist, so the next upgrade would fail on them.
    Only tables mmops's own migrations create are dropped; after the restore, so a restore
    that fails still changes nothing."""
    listing = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [pg_restore.path, "--list", str(file)], capture_output=True, text=True, check=False
    )
    if listing.returncode != 0:
        raise OperationalError(f"pg_restore --list failed: {_one_line(listing.stderr)}")
    archived = set(re.findall(r"^\S+; \d+ \d+ TABLE \S+ (\w+)", listing.stdout, re.MULTILINE))
    newer = sorted(migration_tables() - archived)
    if not newer:
        return
    try:
        with psycopg.connect(database_url, autocommit=False) as conn:
            for table in newer:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))
    except psycopg.Error as e:
        raise OperationalError(f"dropping tables newer than the backup failed: {e}") from None


def migration_tables() -> set[str]:
    """The tables mmops's migrations create."""
    found: set[str] = set()
    for path in MIGRATIONS_DIR.glob("*.sql"):
        if not path.name.endswith(".rollback.sql"):
            found |= set(_CREATE_TABLE.findall(path.read_text()))
    return found


_CREATE_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", re.IGNORECASE)


def _run(
    tool: Tool, args: list[str], database_url: str, timeout: float, after: Sequence[str] = ()
) -> None:
    """Run ``tool *args <conninfo without password> *after`` with the password in PGPASSWORD.

    Raises OperationalError with the tool's message (one line, password masked) on failure.
    """
    params = conninfo_to_dict(database_url)
    password = str(params.pop("password", "") or "")
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = password
    command = [tool.path, *args, make_conninfo("", **params), *after]
    name = Path(tool.path).name
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv, no shell
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise OperationalError(f"{name} did not finish within {timeout:.0f} s") from None
    except OSError as e:
        raise OperationalError(f"{name} could not be run: {e.strerror}") from None
    if done.returncode != 0:
        message = _one_line(done.stderr) or f"exit code {done.returncode}"
        if password:
            message = message.replace(password, "***")
        raise OperationalError(f"{name} failed: {message}")


def _one_line(stderr: str) -> str:
    """The tool's messages on one line, without the SQL that pg_restore quotes after them."""
    lines: list[str] = []
    for raw in stderr.splitlines():
        line = raw.strip()
        if line.startswith("Command was:"):
            break
        if line:
            lines.append(re.sub(r"^pg_(?:dump|restore): (?:error: )?", "", line))
    return re.sub(r"\s+", " ", "; ".join(lines))
