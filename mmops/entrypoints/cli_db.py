"""``mmops db …``: schema migrations, integrity checks, backups and restores."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from mmops.adapters.clock import SystemClock
from mmops.adapters.postgres import backup as pg_backup
from mmops.adapters.postgres import schema
from mmops.adapters.postgres.verify import verify as run_verify
from mmops.entrypoints.cli_common import (
    JsonOption,
    console,
    context_of,
    emit_json,
    err_console,
    handled,
    refuse_outdated_schema,
)
from mmops.errors import ConfigurationError

db = typer.Typer(
    help="PostgreSQL schema: migrations, verification, backup, restore.", no_args_is_help=True
)


@db.command("upgrade")
def upgrade(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Apply every pending migration."""
    with handled():
        applied = schema.upgrade(context_of(ctx).database_url)
        if json_out:
            emit_json({"applied": applied, "latest": schema.latest_id()})
        elif applied:
            console.print(f"applied: {', '.join(applied)}")
        else:
            console.print(f"schema is up to date ({schema.latest_id()})")


@db.command("downgrade")
def downgrade(
    ctx: typer.Context,
    to: Annotated[
        str | None,
        typer.Option(help="Roll back until this migration is the newest; 'zero' for all."),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: rollbacks can drop data.")] = False,
    json_out: JsonOption = False,
) -> None:
    """Roll back the newest migration (or down to --to). Take `mmops db backup` first."""
    with handled():
        if not yes:
            raise ConfigurationError(
                "a downgrade may drop columns and tables with their data; back up with "
                "`mmops db backup`, then repeat with --yes"
            )
        rolled_back = schema.downgrade(context_of(ctx).database_url, to)
        if json_out:
            emit_json({"rolled_back": rolled_back})
        else:
            console.print(f"rolled back: {', '.join(rolled_back) or 'nothing'}")


@db.command("status")
def status(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List migrations and whether each is applied."""
    with handled():
        states = schema.status(context_of(ctx).database_url)
        if json_out:
            emit_json([{"id": s.id, "applied": s.applied} for s in states])
            return
        for s in states:
            console.print(f"{'applied' if s.applied else 'pending':8} {s.id}")


@db.command("verify")
def verify(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Run integrity checks; exit 1 naming each problem found."""
    with handled():
        url = context_of(ctx).database_url
        refuse_outdated_schema(url)
        problems = run_verify(url)
        if json_out:
            emit_json(
                {
                    "ok": not problems,
                    "problems": [
                        {
                            "check": p.check,
                            "description": p.description,
                            "count": p.count,
                            "examples": list(p.examples),
                        }
                        for p in problems
                    ],
                }
            )
        elif not problems:
            console.print("ok: no integrity problems found")
        for p in problems:
            if not json_out:
                examples = f" (e.g. {', '.join(p.examples)})" if p.examples else ""
                err_console.print(f"problem {p.check}: {p.count} {p.description}{examples}")
        if problems:
            raise typer.Exit(1)


def embedded_bin_dir() -> Path:
    """Where pgserver keeps its PostgreSQL binaries (pg_dump and pg_restore among them)."""
    spec = importlib.util.find_spec("pgserver")  # located, not imported
    if spec is None or spec.origin is None:
        return Path("/nonexistent")
    return Path(spec.origin).parent / "pginstall" / "bin"


def find_tool(name: str) -> pg_backup.Tool:
    """The newest ``name`` of PATH's and the embedded server's (see pg_backup.find_tool)."""
    return pg_backup.find_tool(name, [embedded_bin_dir() / name])


@db.command("backup")
def backup(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Directory for the dump file.")] = Path("backups"),
    json_out: JsonOption = False,
) -> None:
    """Write a pg_dump -Fc file named with the UTC time."""
    with handled():
        pg_dump = find_tool("pg_dump")
        path = pg_backup.backup(context_of(ctx).database_url, out, SystemClock().now(), pg_dump)
        if json_out:
            emit_json({"backup": str(path), "bytes": path.stat().st_size})
        else:
            console.print(f"backup written: {path} ({path.stat().st_size} bytes)")


@db.command("restore")
def restore(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", help="A file written by `mmops db backup`.", show_default=False
        ),
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: the backup replaces the tables and their data.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Replace the database's tables, data and migration state with a backup's, in one
    transaction. Stop `mmops serve` first."""
    with handled():
        dump = pg_backup.read_dump_info(file)
        if not yes:
            raise ConfigurationError(
                "a restore replaces the tables and their data with the backup's; back up "
                "with `mmops db backup`, stop `mmops serve`, then repeat with --yes"
            )
        pg_restore = find_tool("pg_restore")
        url = context_of(ctx).database_url
        pg_backup.restore(url, file, dump, pg_restore)
        current = schema.is_current(url)
        database = pg_backup.database_name(url)
        if json_out:
            emit_json(
                {
                    "restored": str(file),
                    "database": database,
                    "dumped_by": dump.pg_dump_version,
                    "pg_restore": pg_restore.path,
                    "schema_current": current,
                }
            )
            return
        console.print(
            f"restored {file} (pg_dump {dump.pg_dump_version}, database {dump.dbname}) "
            f"into database {database}"
        )
        if not current:
            console.print("the backup's schema is older than this release: run `mmops db upgrade`")
