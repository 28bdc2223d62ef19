"""``mmops status``: sessions with their last settlement and migration state."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import typer
from rich.table import Table

from mmops.bootstrap import open_runtime
from mmops.entrypoints.cli_common import (
    JsonOption,
    console,
    context_of,
    emit_json,
    handled,
    refuse_outdated_schema,
    run_async,
)
from mmops.entrypoints.status_view import collect_status


def status(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Recent sessions: last settlement (state, age, counts), coverage per pair, migration."""
    with handled():
        context = context_of(ctx)
        urls = context.urls
        refuse_outdated_schema(urls.database)

        async def go() -> list[dict[str, Any]]:
            async with open_runtime(context.settings, urls) as rt:
                return await collect_status(rt)

        rows = run_async(go())
        if json_out:
            emit_json({"sessions": rows})
            return
        if not rows:
            console.print(f"no sessions in the last {context.settings.settlement_hours_back} h")
            return
        table = Table("session", "status", "pairs", "last settlement", "coverage", "migrated")
        for row in rows:
            last = row["last_settlement"]
            age = f" {last['age_s']:.0f} s ago" if last["age_s"] is not None else ""
            lowest = min((Decimal(c["percent"]) for c in row["coverage"]), default=None)
            table.add_row(
                row["session"],
                row["status"],
                str(len(row["pairs"])),
                f"{last['state'] or '-'}{age}",
                "-" if lowest is None else f"min {lowest}%",
                row["migration_completed_at"] or "no",
            )
        console.print(table)
