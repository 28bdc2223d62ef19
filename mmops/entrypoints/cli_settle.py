"""``mmops settle``: one settlement run over recent sessions (or one session)."""

from __future__ import annotations

from typing import Annotated

import typer

from mmops.bootstrap import build_settlement, check_tier_pairs, open_exchange, open_runtime
from mmops.entrypoints.cli_common import (
    JsonOption,
    console,
    context_of,
    emit_json,
    handled,
    refuse_outdated_schema,
    run_async,
)
from mmops.services.settlement import SessionResult


def settle(
    ctx: typer.Context,
    session: Annotated[str | None, typer.Option(help="Settle only this session.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compute everything, place nothing.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Cover uncovered positions with take-profits and check the stop-loss.

    Exit 0 when all went well, 1 when something failed or was left uncovered for a reason
    other than dust, 2 on bad configuration.
    """
    with handled():
        context = context_of(ctx)
        urls = context.urls
        refuse_outdated_schema(urls.database)
        live_dry_run = dry_run or context.settings.dry_run

        async def go() -> list[SessionResult]:
            async with (
                open_runtime(context.settings, urls) as rt,
                open_exchange(rt, dry_run=live_dry_run) as exchange,
            ):
                await check_tier_pairs(rt.settings, exchange)
                service = build_settlement(rt, exchange, dry_run=live_dry_run)
                return await service.run(session)

        results = run_async(go())
        if json_out:
            emit_json({"sessions": [r.to_dict() for r in results], "dry_run": live_dry_run})
        else:
            _print(results)
        if not all(r.ok for r in results):
            raise typer.Exit(1)


def _print(results: list[SessionResult]) -> None:
    if not results:
        console.print("no sessions to settle")
    for r in results:
        t = r.totals()
        console.print(
            f"[bold]{r.session_id}[/] {r.state} in {r.duration_ms} ms: placed {t.get('placed', 0)},"
            f" skipped {t.get('skipped', 0)}, failed {t.get('failed', 0)}"
        )
        for pair, report in r.pairs.items():
            c = report.counts()
            reasons = ", ".join(
                f"{k.removeprefix('skipped_')} {v}"
                for k, v in c.items()
                if k.startswith("skipped_")
            )
            line = f"  {pair:10} placed {c['placed']:3}  failed {c['failed']:3}"
            line += f"  skipped {c['skipped']:3}" + (f" ({reasons})" if reasons else "")
            if report.error:
                line += f"  error: {report.error}"
            console.print(line)
        if r.stoploss is not None:
            s = r.stoploss
            console.print(
                f"  stop-loss: drawdown {s.drawdown:.2%}, level {s.level.value}"
                + (f", acted: {s.action}" if s.action else "")
            )
        for error in r.errors()[:10]:
            console.print(f"  [red]{error}[/]")
