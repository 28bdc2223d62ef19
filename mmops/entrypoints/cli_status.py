"""``mmops status``: sessions with their last settlement and migration state."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from rich.table import Table

from mmops.adapters.paper.catalog import CATALOG
from mmops.adapters.postgres import schema
from mmops.adapters.redis.ops import OpsStore
from mmops.bootstrap import Runtime, build_exchange, open_runtime
from mmops.entrypoints.cli import JsonOption, app, console, ctx, emit_json, handled, run_async
from mmops.errors import ConfigurationError
from mmops.services.coverage import CoverageService


async def _collect(rt: Runtime) -> list[dict[str, Any]]:
    ops = OpsStore(rt.redis)
    s = rt.settings
    now = rt.clock.now()
    sessions = await rt.registry.recent_sessions(
        s.settlement_hours_back, s.settlement_session_limit, now
    )
    coverage = CoverageService(rt.positions)
    markets = {listing.market.symbol: listing.market for listing in CATALOG}
    if s.exchange != "paper":
        exchange = build_exchange(s, rt.redis, rt.clock, dry_run=True)
        try:
            markets = await exchange.markets()
        finally:
            await exchange.close()
    rows = []
    for session in sessions:
        settlement = await ops.settlement_status(session.id)
        last_run = await ops.settlement_last_run(session.id)
        pairs = [p for p in session.pairs if p in markets]
        covered = [await coverage.pair(session.id, p, markets[p], now) for p in pairs]
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
                    "finished_at": last_run,
                    "age_s": _age(last_run, now),
                    "placed": settlement.get("placed"),
                    "skipped": settlement.get("skipped"),
                    "failed": settlement.get("failed"),
                    "stoploss_level": settlement.get("stoploss_level"),
                },
                "coverage": [c.to_dict() for c in covered],
                "migration_completed_at": await ops.migration_completed(session.id),
            }
        )
    return rows


def _age(at: str | None, now: datetime) -> float | None:
    return None if at is None else (now - datetime.fromisoformat(at)).total_seconds()


@app.command("status")
def status(json_out: JsonOption = False) -> None:
    """Recent sessions: last settlement (state, age, counts), coverage per pair, migration."""
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
