"""``mmops demo``, ``mmops sim`` and ``mmops verify-coverage``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from mmops import logs
from mmops.adapters.paper.catalog import SYMBOLS
from mmops.bootstrap import Runtime, build_reconciler, open_exchange, open_runtime
from mmops.entrypoints.cli_common import (
    JsonOption,
    console,
    context_of,
    emit_json,
    handled,
    refuse_outdated_schema,
    run_async,
    upgrade_outdated_schema,
)
from mmops.entrypoints.cli_report import print_tier_table
from mmops.entrypoints.workflow import SimFigures, WorkflowPlan, report, run_workflow
from mmops.errors import ConfigurationError, UnknownSession
from mmops.services.coverage import CoverageService

PairsOption = Annotated[
    int, typer.Option("--pairs", min=1, max=len(SYMBOLS), help="Pairs to quote.")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of prices and the trading loop.")]


def _pairs(n: int) -> tuple[str, ...]:
    return SYMBOLS[:n]


def demo(
    ctx: typer.Context,
    pairs: PairsOption = 10,
    hours: Annotated[float, typer.Option(min=0.1, max=72, help="Simulated hours.")] = 6,
    seed: SeedOption = 7,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log every event.")] = False,
    json_out: JsonOption = False,
) -> None:
    """The whole paper workflow on a simulated clock, then a report.

    Trades PAIRS pairs for HOURS simulated hours on the paper venue, settles every 3 simulated
    minutes, migrates hourly and at the end, and prints per-pair figures, settlement latency,
    migration completeness and the per-pair P&L analysis query. The demo's session id is
    demo-SEED: a new run with the same seed replaces the previous one.
    """
    with handled():
        context = context_of(ctx)
        if not verbose:
            logs.configure("WARNING", context.settings.log_format)
        urls = context.urls
        upgrade_outdated_schema(urls.database)
        # The session ends now, so `status`, `verify-coverage` and the dashboard show it; on a
        # whole second, so every simulated step lands on the same offsets from the start.
        start = (datetime.now(UTC) - timedelta(hours=hours)).replace(microsecond=0)
        plan = WorkflowPlan(pairs=_pairs(pairs), hours=hours, seed=seed, start=start)
        session_id = f"demo-{seed}"

        async def go() -> dict[str, Any]:
            async with open_runtime(context.settings, urls) as rt:
                await rt.session_records.delete(session_id)
                await rt.sessions.delete_all(session_id)
                result = await run_workflow(rt, plan, session_id, venue=session_id)
                return await report(rt, plan, result)

        data = run_async(go())
        if json_out:
            emit_json(data)
        else:
            _print_demo(data)
        if not (data["migration"] and data["migration"]["complete"]):
            raise typer.Exit(1)


def _money(value: str) -> str:
    return f"{Decimal(value).quantize(Decimal('0.01')):,}"


def _qty(value: str) -> str:
    return f"{Decimal(value).quantize(Decimal('0.0001')):,}"


def _print_demo(data: dict[str, Any]) -> None:
    table = Table("pair", "fills", "positions", "coverage %", "TPs filled", "fees",
                  "realized P&L", "open qty", title=f"session {data['session']}")  # fmt: skip
    for p in data["pairs"]:
        table.add_row(p["pair"], str(p["fills"]), str(p["positions"]), p["coverage_percent"],
                      str(p["take_profits_filled"]), _money(p["fees"]),
                      _money(p["realized_pnl"]), _qty(p["open_quantity"]))  # fmt: skip
    Console(highlight=False, width=max(console.width, 120)).print(table)  # never truncate
    print_tier_table(data["tiers"])
    t, m = data["timings"], data["migration"]
    console.print(
        f"settlement: {t['settlement_runs']} runs, p50 {t['settlement_ms_p50']} ms, "
        f"p99 {t['settlement_ms_p99']} ms"
    )
    if m:
        console.print(f"migration: {m['state']}, {m['fills_in_postgres']} fills in PostgreSQL, "
                      f"{m['rejects']} rejects")  # fmt: skip
    console.print(f"analysis query (docs/MONITORING_QUERIES.md, per-pair P&L): "
                  f"{len(data['analysis_query'])} rows")  # fmt: skip
    f = data["feed"]
    console.print(f"fill feed: {f['executions']} executions read, {f['recorded']} recorded, "
                  f"{f['unattributed']} unattributed; {data['take_profits_on_fill']} take-profits "
                  "placed in the step of their fill")  # fmt: skip
    console.print(f"{data['simulated_hours']} simulated hours in {t['wall_seconds']} s")


def sim(
    ctx: typer.Context,
    pairs: PairsOption = 10,
    hours: Annotated[float, typer.Option(min=0.01, max=72, help="How long to trade.")] = 1,
    seed: SeedOption = 7,
    session: Annotated[str | None, typer.Option(help="Session id (default: sim-<time>).")] = None,
    simulated: Annotated[
        bool, typer.Option("--simulated", help="Run on a simulated clock, as fast as it goes.")
    ] = False,
    settle: Annotated[
        bool, typer.Option("--settle/--no-settle", help="Settle every interval in this process.")
    ] = True,
    step: Annotated[int, typer.Option(min=1, help="Seconds between loop steps.")] = 10,
    json_out: JsonOption = False,
) -> None:
    """Run the paper trading loop on the configured paper venue (MMOPS_PAPER_VENUE).

    On the real clock it feeds a running `mmops serve` (use --no-settle) or manual `settle` /
    `migrate` runs. With --simulated the session ends at the current time, after HOURS of
    simulated trading, with settlement every MMOPS_SETTLEMENT_INTERVAL simulated seconds.
    """
    with handled():
        context = context_of(ctx)
        if context.settings.exchange != "paper":
            raise ConfigurationError(
                "MMOPS_EXCHANGE: the trading loop runs on the paper venue only"
            )
        urls = context.urls
        upgrade_outdated_schema(urls.database)
        now = datetime.now(UTC)
        start = now - timedelta(hours=hours) if simulated else now
        sid = session or f"sim-{start:%Y%m%d%H%M%S}"
        plan = WorkflowPlan(
            pairs=_pairs(pairs),
            hours=hours,
            seed=seed,
            start=start,
            step_seconds=step,
            settle_every=context.settings.settlement_interval,
            settle=settle,
            migrate=False,
            real_clock=not simulated,
        )

        shown = SimProgress(sid, int(hours * 3600), quiet=json_out or simulated)

        async def go() -> dict[str, Any]:
            async with open_runtime(context.settings, urls) as rt:
                with shown:
                    result = await run_workflow(rt, plan, sid, on_progress=shown.update)
            return {
                "session": sid,
                "fills": result.loop.fills,
                "settlements": len(result.settle_ms),
                "feed": result.feed.to_dict(),
                "take_profits_on_fill": result.triggered_placed,
            }

        data = run_async(go())
        if json_out:
            emit_json(data)
        else:
            console.print(f"session {data['session']}: {data['fills']} fills, "
                          f"{data['settlements']} settlement runs")  # fmt: skip


class SimProgress:
    """What a trading loop on the real clock is doing: a live line on a terminal, a line a
    minute otherwise (logs, pipes); nothing for --json or --simulated runs."""

    LINE_EVERY = 60.0  # seconds between lines when stdout is not a terminal

    def __init__(self, session_id: str, total_seconds: int, *, quiet: bool) -> None:
        self._session = session_id
        self._total = total_seconds
        self._quiet = quiet
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = 0.0

    def __enter__(self) -> SimProgress:
        if not self._quiet and console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
                console=console,
            )  # fmt: skip
            self._task = self._bar.add_task(self._session, total=self._total)
            self._bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(self, f: SimFigures) -> None:
        if self._quiet:
            return
        coverage = "-" if f.coverage is None else f"{f.coverage}%"
        text = (f"{self._session}: {f.fills} fills, {f.take_profits} take-profits, "
                f"{f.settlements} settlements, lowest coverage {coverage}")  # fmt: skip
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=f.elapsed, description=text)
        elif time.monotonic() - self._last_line >= self.LINE_EVERY or f.elapsed >= self._total:
            self._last_line = time.monotonic()
            done, total = timedelta(seconds=f.elapsed), timedelta(seconds=self._total)
            console.print(f"{done} of {total}: {text}")


def verify_coverage(
    ctx: typer.Context,
    session: Annotated[str | None, typer.Option(help="Only this session.")] = None,
    minimum: Annotated[
        float, typer.Option("--min", min=0, max=100, help="Lowest acceptable coverage %.")
    ] = 99,
    json_out: JsonOption = False,
) -> None:
    """Per session and pair: the share of coverable quantity covered and the age of the oldest
    uncovered position. Exit 1 if any pair is below --min."""
    with handled():
        context = context_of(ctx)
        urls = context.urls
        refuse_outdated_schema(urls.database)

        async def go() -> list[dict[str, Any]]:
            async with open_runtime(context.settings, urls) as rt:
                return await _coverage(rt, session)

        rows = run_async(go())
        below = [r for r in rows if float(r["percent"]) < minimum]
        if json_out:
            emit_json({"minimum": minimum, "ok": not below, "pairs": rows})
        else:
            for r in rows:
                age = r["oldest_uncovered_s"]
                console.print(
                    f"{r['session']} {r['pair']:10} {r['percent']:>7}% covered "
                    f"({r['covered']} of {r['coverable']})"
                    + (f", oldest uncovered {age:.0f} s" if age is not None else "")
                )
            if below:
                console.print(f"[red]{len(below)} pairs below {minimum}%[/]")
        if below:
            raise typer.Exit(1)


async def _coverage(rt: Runtime, session_id: str | None) -> list[dict[str, Any]]:
    s = rt.settings
    if session_id is not None:
        found = await rt.registry.get(session_id)
        if found is None:
            raise UnknownSession(session_id)
        sessions = [found]
    else:
        sessions = await rt.registry.recent_sessions(
            s.settlement_hours_back, s.settlement_session_limit, rt.clock.now()
        )
    rows = []
    # Measured against the exchange: a take-profit it does not show open or filled does not
    # count as covering (a read-only reconciliation; nothing is changed or placed).
    async with open_exchange(rt, dry_run=True) as exchange:
        markets = await exchange.markets()
        service = CoverageService(rt.positions, build_reconciler(rt, exchange, dry_run=True))
        for sess in sessions:
            for c in await service.session(sess, markets, rt.clock.now()):
                rows.append({"session": sess.id, **c.to_dict()})
    return rows
