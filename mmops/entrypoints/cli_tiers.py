"""``mmops tiers backtest``: replay a session's recorded prices against other tier tables and
compare them with the table it ran with (docs/BACKTEST.md)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated

import typer
from rich.table import Table

from mmops.adapters.paper.catalog import BY_SYMBOL
from mmops.adapters.paper.matching import fill_quantity
from mmops.adapters.postgres.backtest_reads import read_history
from mmops.bootstrap import Runtime, open_exchange, open_runtime
from mmops.domain.backtest import SessionHistory, whole_fills
from mmops.domain.models import Market
from mmops.domain.tiers import TierPolicy, TierTable
from mmops.entrypoints.cli_common import (
    JsonOption,
    console,
    context_of,
    emit_json,
    handled,
    refuse_outdated_schema,
    run_async,
)
from mmops.errors import BadDataError, UnknownSession
from mmops.services.backtest import BASELINE, BacktestReport, Candidate, run_backtest

tiers = typer.Typer(help="Take-profit tier tables.", no_args_is_help=True)

TiersOption = Annotated[
    list[str] | None,
    typer.Option(
        "--tiers",
        help="A table to compare, as JSON {minutes: markup fraction}, e.g. "
        '\'{"0": 0.012, "60": 0.006}\'; prefix a name with `name=`. Repeat for more tables.',
    ),
]


def parse_tables(values: list[str], allow_loss: bool) -> list[Candidate]:
    """``--tiers`` values as labelled tables. Raises typer.BadParameter naming the bad one."""
    candidates: list[Candidate] = []
    for n, raw in enumerate(values, start=1):
        label, _, text = raw.partition("=") if not raw.lstrip().startswith("{") else ("", "", raw)
        label = label.strip() or f"table-{n}"
        try:
            table = json.loads(text, parse_float=Decimal, parse_int=Decimal)
            if not isinstance(table, dict) or not table:
                raise ValueError("expected a JSON object {minutes: markup}")
            parsed = TierTable.parse(
                {_minutes(k): _markup(k, v) for k, v in table.items()}, allow_loss=allow_loss
            )
        except (ValueError, ArithmeticError) as e:
            raise typer.BadParameter(f"{label}: {e}", param_hint="--tiers") from None
        if label == BASELINE or label in {c.label for c in candidates}:
            raise typer.BadParameter(
                f"{label}: each table needs its own label, and {BASELINE!r} is the session's own",
                param_hint="--tiers",
            )
        candidates.append(Candidate(label, TierPolicy(default=parsed)))
    return candidates


def _markup(minutes: str, value: object) -> Decimal:
    if not isinstance(value, Decimal):  # JSON numbers are parsed as Decimal
        raise ValueError(f"tier {minutes}: markup must be a number, got {value!r}")
    return value


def _minutes(key: str) -> int:
    if not key.strip().isdigit():
        raise ValueError(f"tier age {key!r} must be whole minutes")
    return int(key)


def backtest(
    ctx: typer.Context,
    session: Annotated[str, typer.Option(help="The session to replay.")],
    tables: TiersOption = None,
    resamples: Annotated[
        int, typer.Option(min=100, max=100_000, help="Bootstrap resamples for the confidence.")
    ] = 1000,
    json_out: JsonOption = False,
) -> None:
    """Replay a session's recorded prices (settlement's tickers) against tier tables: fill
    rate, time to fill, realized markup and P&L, inventory-hours, open positions; ranked by
    realized P&L per inventory-hour, with a bootstrap confidence against the session's own
    table (the configured MMOPS_TP_TIERS, included as `session`).

    Exit 0 on a report, 2 on bad configuration, a bad --tiers or an unknown session.
    """
    with handled():
        context = context_of(ctx)
        settings = context.settings
        candidates = parse_tables(tables or [], settings.tp_allow_loss_tiers)
        urls = context.urls
        refuse_outdated_schema(urls.database)

        async def go() -> BacktestReport:
            async with open_runtime(settings, urls) as rt:
                history = await read_history(rt.pool, session)
                if history is None:
                    raise UnknownSession(session)
                markets = await _markets(rt, history)
            # A paper session's half fills are the venue's reproducible coin, replayed exactly
            # on the fill path it recorded (without one, the coin would toss at other times).
            paper = history.session.exchange == "paper" and history.path
            fills = fill_quantity if paper else whole_fills
            try:
                return run_backtest(
                    history,
                    markets,
                    settings.tier_policy(),
                    candidates,
                    fills=fills,
                    resamples=resamples,
                )
            except ValueError as e:  # a pair with no market (delisted, or not in the catalog)
                raise BadDataError(f"session {session}: {e}") from None

        report = run_async(go())
    if json_out:
        emit_json(report.to_dict())
    else:
        _print(report)


async def _markets(rt: Runtime, history: SessionHistory) -> Mapping[str, Market]:
    """The session's markets: the paper catalog for a paper session, else the exchange's."""
    if history.session.exchange == "paper":
        return {s: listing.market for s, listing in BY_SYMBOL.items()}
    async with open_exchange(rt, dry_run=True) as exchange:
        return await exchange.markets()


def _print(report: BacktestReport) -> None:
    table = Table(
        "rank", "table", "positions", "fill rate", "ttf p50/p90 min", "markup", "realized P&L",
        "inventory-h", "P&L / inv-h", "open", title=f"tier backtest of {report.session_id}",
    )  # fmt: skip
    for n, t in enumerate(report.tables, start=1):
        table.add_row(
            str(n), t.label, str(t.positions), _pct(t.fill_rate),
            f"{_min(t.time_to_fill_p50_s)}/{_min(t.time_to_fill_p90_s)}",
            _pct(t.realized_markup, 3), f"{t.realized_pnl:.2f}", f"{t.inventory_hours:.1f}",
            _num(t.pnl_per_inventory_hour), str(t.open_positions),
        )  # fmt: skip
    console.print(table)
    for c in report.confidence:
        interval = "n/a" if c.low is None else f"[{_num(c.low)}, {_num(c.high)}]"
        console.print(
            f"{c.label} vs session: {_num(c.difference)} P&L/inv-h, 95% interval {interval} "
            f"over {c.positions} positions: {c.verdict.value}"
        )
    r = report.reproduction
    console.print(
        f"fills matched on the recorded fill path ({report.path_points} points)"
        if report.path_points
        else f"fills matched on the settlement-time prices ({report.price_records} points): "
        "no fill path was recorded, so fills between runs are missed"
    )
    console.print(
        f"session table vs real take-profit fills: {r.matched}/{r.real_sold} positions "
        f"reproduced ({_pct(r.rate)}), {r.only_real} real only, {r.only_replay} replay only; "
        f"P&L real {r.real_pnl:.2f}, replay {r.replay_pnl:.2f}"
    )
    for line in report.tier_mismatches + report.warnings:
        console.print(f"[yellow]warning:[/] {line}")
    if report.bad_rows:
        console.print(f"[yellow]{len(report.bad_rows)} bad rows left out[/]")


def _pct(value: Decimal | None, places: int = 1) -> str:
    return "n/a" if value is None else f"{value * 100:.{places}f}%"


def _min(seconds: int | None) -> str:
    return "-" if seconds is None else f"{seconds / 60:.0f}"


def _num(value: Decimal | None) -> str:
    return "n/a" if value is None else f"{value:.6f}"


tiers.command("backtest")(backtest)
