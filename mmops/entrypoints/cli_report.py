"""``mmops report``: take-profit analytics from the warehouse, per session, pair and tier
(the SQL is in docs/MONITORING_QUERIES.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from mmops.adapters.postgres import analysis
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
from mmops.errors import UnknownSession
from mmops.jsonable import jsonable

OVERVIEW_LIMIT = 100


def rows_json(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [jsonable(row) for row in rows]


def report(
    ctx: typer.Context,
    session: Annotated[
        str | None, typer.Option(help="One session (default: every session).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Take-profits per session, pair and tier: placed, filled, repriced, open; time from fill
    to take-profit and from take-profit to its fill (p50/p90); markup planned versus captured;
    realized P&L; inventory-hours. Then each session's key figures.

    Exit 0 on a report (empty when nothing is migrated), 2 on bad configuration or a session
    the warehouse does not know.
    """
    with handled():
        context = context_of(ctx)
        urls = context.urls
        refuse_outdated_schema(urls.database)

        async def go() -> dict[str, Any]:
            async with open_runtime(context.settings, urls) as rt:
                sessions = await analysis.overview(rt.pool, OVERVIEW_LIMIT, session)
                if session is not None and not sessions:
                    raise UnknownSession(session)  # not in the warehouse (not migrated yet?)
                tiers = await analysis.tier_report(rt.pool, session)
            return {"tiers": rows_json(tiers), "sessions": rows_json(sessions)}

        data = run_async(go())
    if json_out:
        emit_json(data)
        return
    print_tier_table(data["tiers"])
    print_sessions(data["sessions"])


def _dec(value: Any, places: str) -> str:
    if value is None:
        return "-"
    return f"{Decimal(str(value)).quantize(Decimal(places)):,}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{Decimal(str(value)) * 100:.3f}"


def _secs(value: Any) -> str:
    return "-" if value is None else f"{Decimal(str(value)):.0f}"


def tier_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The tier rows (as ``tier_report`` returns them, or as JSON) as a rich table."""
    table = Table("session", "pair", "tier min", "placed", "filled", "repriced", "open",
                  "fill→TP p50/p90 s", "TP→fill p50/p90 s", "markup plan %", "captured %",
                  "realized P&L", "inventory-h", title="take-profits per tier")  # fmt: skip
    for r in rows:
        table.add_row(
            str(r["session_id"]), str(r["symbol"]),
            "unpriced" if r["tier"] is None else str(r["tier"]),
            str(r["placed"]), str(r["filled"]), str(r["repriced"]), str(r["open"]),
            f"{_secs(r['fill_to_tp_p50_s'])}/{_secs(r['fill_to_tp_p90_s'])}",
            f"{_secs(r['tp_to_fill_p50_s'])}/{_secs(r['tp_to_fill_p90_s'])}",
            _pct(r["markup_planned"]), _pct(r["markup_captured"]),
            _dec(r["realized_pnl"], "0.01"), _dec(r["inventory_hours"], "0.01"),
        )  # fmt: skip
    return table


def print_tier_table(rows: Sequence[Mapping[str, Any]]) -> None:
    if not rows:
        console.print("take-profits per tier: none in the warehouse (is migration done?)")
        return
    Console(highlight=False, width=max(console.width, 160)).print(tier_table(rows))


def print_sessions(rows: Sequence[Mapping[str, Any]]) -> None:
    table = Table("session", "status", "pairs", "realized P&L", "today", "coverage %",
                  "stop-loss", title="sessions")  # fmt: skip
    for s in rows:
        table.add_row(
            str(s["session_id"]), str(s["status"]), str(len(s["pairs"] or [])),
            _dec(s["realized_pnl"], "0.01"), _dec(s["realized_pnl_today"], "0.01"),
            _pct(s["coverage_ratio"]), s["stoploss_level"] or "-",
        )  # fmt: skip
    Console(highlight=False, width=max(console.width, 120)).print(table)
