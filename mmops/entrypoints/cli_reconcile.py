"""``mmops reconcile``: what mmops believed, what the exchange says, what was done."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from mmops.bootstrap import Runtime, build_reconciler, open_exchange, open_runtime
from mmops.domain.models import Session
from mmops.entrypoints.cli_common import (
    JsonOption,
    console,
    context_of,
    emit_json,
    handled,
    refuse_outdated_schema,
    run_async,
)
from mmops.errors import LockNotAcquired, UnknownSession
from mmops.services.reconcile import ReconcileAction, ReconcileReport

COLUMNS = ("session", "pair", "order_id", "client_order_id", "position_id", "believed",
           "exchange", "filled", "action")  # fmt: skip


@dataclass(slots=True)
class Outcome:
    report: ReconcileReport
    sessions: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)  # held by a settlement run: not checked

    @property
    def ok(self) -> bool:
        failed = any(r.action is ReconcileAction.LOOKUP_FAILED for r in self.report.rows)
        return not failed and not self.locked

    def to_dict(self) -> dict[str, Any]:
        return {"sessions": self.sessions, "locked": self.locked, **self.report.to_dict()}


def reconcile(
    ctx: typer.Context,
    session: Annotated[str | None, typer.Option(help="Reconcile only this session.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report what would be done, change nothing.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Check every take-profit mmops believes live against the exchange: record fills,
    release what the exchange cancelled (settlement covers it again), report unknown orders.

    Exit 0 when every order was checked, 1 when a look-up failed or a session was locked by a
    settlement run, 2 on bad configuration or an unknown session.
    """
    with handled():
        context = context_of(ctx)
        urls = context.urls
        refuse_outdated_schema(urls.database)
        live_dry_run = dry_run or context.settings.dry_run

        async def go() -> Outcome:
            async with (
                open_runtime(context.settings, urls) as rt,
                open_exchange(rt, dry_run=live_dry_run) as exchange,
            ):
                reconciler = build_reconciler(rt, exchange, dry_run=live_dry_run)
                outcome = Outcome(ReconcileReport(dry_run=live_dry_run))
                for s in await _sessions(rt, session):
                    outcome.sessions.append(s.id)
                    try:
                        report = await reconciler.locked(s)
                    except LockNotAcquired:
                        outcome.locked.append(s.id)
                        continue
                    outcome.report = outcome.report.merged(report)
                return outcome

        outcome = run_async(go())
        if json_out:
            emit_json(outcome.to_dict())
        else:
            _print(outcome)
        if not outcome.ok:
            raise typer.Exit(1)


async def _sessions(rt: Runtime, session_id: str | None) -> list[Session]:
    """One session (UnknownSession if no store knows it), or every recent one (as settle)."""
    s = rt.settings
    if session_id is not None:
        found = await rt.registry.get(session_id)
        if found is None:
            raise UnknownSession(session_id)
        return [found]
    return await rt.registry.recent_sessions(
        s.settlement_hours_back, s.settlement_session_limit, rt.clock.now()
    )


def _print(outcome: Outcome) -> None:
    """A table with one line per order, sorted, columns in a fixed order: two runs diff."""
    if not outcome.sessions:
        console.print("no sessions to reconcile")
        return
    rows = [
        [r.session, r.pair, r.order_id, r.client_order_id or "-", r.position_id or "-",
         r.believed.value if r.believed else "-", r.exchange.value if r.exchange else "-",
         "-" if r.filled is None else str(r.filled), r.action.value]
        for r in outcome.report.rows
    ]  # fmt: skip
    widths = [max([len(c), *(len(row[i]) for row in rows)]) for i, c in enumerate(COLUMNS)]
    for line in [list(COLUMNS), *rows]:
        console.print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())
    counts = outcome.report.counts()
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    dry = " (dry run: nothing changed)" if outcome.report.dry_run else ""
    console.print(f"{summary}{dry}")
    for sid in outcome.locked:
        console.print(f"[yellow]{sid}: locked by a settlement run, not checked[/]")
