"""``mmops migrate``: move sessions, orders and fills from Redis to PostgreSQL."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.progress import Progress

from mmops.bootstrap import build_migration, open_runtime
from mmops.entrypoints.cli_common import (
    JsonOption,
    console,
    context_of,
    emit_json,
    handled,
    refuse_outdated_schema,
    run_async,
)
from mmops.services.migration import SessionMigration


def migrate(
    ctx: typer.Context,
    session: Annotated[str | None, typer.Option(help="Migrate only this session.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(min=1, help="Sessions per batch (MMOPS_MIGRATION_BATCH_SIZE).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Migrate every session not yet complete (or one); exit 1 on any failure or mismatch."""
    with handled():
        context = context_of(ctx)
        urls = context.urls
        refuse_outdated_schema(urls.database)
        interactive = sys.stdout.isatty() and not json_out

        async def go() -> list[SessionMigration]:
            async with open_runtime(context.settings, urls) as rt:
                service = build_migration(rt, batch_size)
                if not interactive:
                    return await service.run(session, None if json_out else _line)
                with Progress(console=console, transient=True) as progress:
                    task = progress.add_task("migrating sessions", total=None)

                    def done(r: SessionMigration) -> None:
                        progress.advance(task)
                        _line(r)

                    return await service.run(session, done)

        results = run_async(go())
        if json_out:
            emit_json({"sessions": [r.to_dict() for r in results]})
        elif not results:
            console.print("nothing to migrate")
        else:
            verified = sum(r.state == "verified" for r in results)
            console.print(f"{len(results)} sessions: {verified} verified complete")
        if not all(r.ok for r in results):
            raise typer.Exit(1)


def _line(r: SessionMigration) -> None:
    console.print(
        f"{r.session_id} {r.state}: orders {r.orders}, fills inserted {r.fills_inserted}, "
        f"duplicates skipped {r.duplicates_skipped}, rejects {r.rejects} ({r.duration_ms} ms)"
    )
    for problem in r.mismatches() + ([r.error] if r.error else []):
        console.print(f"  [red]{problem}[/]")
