"""``mmops status``: sessions with their last settlement and migration state."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from mmops.adapters.postgres import schema
from mmops.adapters.redis.ops import OpsStore
from mmops.bootstrap import Runtime, open_runtime
from mmops.entrypoints.cli import JsonOption, app, console, ctx, emit_json, handled, run_async
from mmops.errors import ConfigurationError


async def _collect(rt: Runtime) -> list[dict[str, Any]]:
    ops = OpsStore(rt.redis)
    s = rt.settings
    sessions = await rt.registry.recent_sessions(
        s.settlement_hours_back, s.settlement_session_limit, rt.clock.now()
    )
    rows = []
    for session in sessions:
        settlement = await ops.settlement_status(session.id)
        rows.append(
            {
                "session": session.id,
                "status": session.status.value,
                "mode": session.mode,
                "exchange": session.exchange,
                "pairs": list(session.pairs),
                "started_at": session.started_at.isoformat(),
                "ended_at": session.ended_at.isoformat() if session.ended_at else None,
                "last_settlement": {
                    "state": settlement.get("state"),
                    "finished_at": await ops.settlement_last_run(session.id),
                    "placed": settlement.get("placed"),
                    "skipped": settlement.get("skipped"),
                    "failed": settlement.get("failed"),
                },
                "migration_completed_at": await ops.migration_completed(session.id),
            }
        )
    return rows


@app.command("status")
def status(json_out: JsonOption = False) -> None:
    """Recent sessions with their last settlement and migration state."""
    with handled():
        context = ctx()
        urls = context.urls
        if not schema.is_current(urls.database):
            raise ConfigurationError(
                "schema is not at the latest migration: run `mmops db upgrade`"
            )

        async def go() -> list[dict[str, Any]]:
            async with open_runtime(context.settings, urls) as rt:
                return await _collect(rt)

        rows = run_async(go())
        if json_out:
            emit_json({"sessions": rows})
            return
        if not rows:
            console.print(f"no sessions in the last {context.settings.settlement_hours_back} h")
            return
        table = Table("session", "status", "pairs", "last settlement", "migrated")
        for row in rows:
            last = row["last_settlement"]
            table.add_row(
                row["session"],
                row["status"],
                str(len(row["pairs"])),
                f"{last['state'] or '-'} {last['finished_at'] or ''}",
                row["migration_completed_at"] or "no",
            )
        console.print(table)
