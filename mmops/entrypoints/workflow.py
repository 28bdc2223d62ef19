"""The paper workflow: trading → settlement → migration → analysis, on one clock.

``run_workflow`` is the one driver of the paper trading loop. It steps the loop every
``step_seconds`` and runs settlement every ``settle_every`` and migration every
``migrate_every`` seconds of trading, in this process, through the same services the CLI and
the daemon use. ``mmops demo`` (and the workflow benchmark) run it on a simulated clock on a
venue of their own, reset and funded, its prices starting with the run; ``mmops sim`` runs it
on the configured paper venue, topped up when short, on a simulated clock or on the real one
(sleeping between steps), with a progress callback. ``report`` gathers the figures
``mmops demo`` prints.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from mmops.adapters.clock import SimulatedClock, SystemClock
from mmops.adapters.paper.catalog import CATALOG
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.paper.feed import PaperFeed
from mmops.adapters.postgres.analysis import pair_pnl, tier_report
from mmops.bootstrap import (
    Runtime,
    build_feed,
    build_migration,
    build_reconciler,
    build_settlement,
    open_paper_venue,
    reset_paper_venue,
)
from mmops.domain.models import Fill, Market, Side
from mmops.entrypoints.cli_report import rows_json
from mmops.services.coverage import CoverageService
from mmops.services.feed import FeedCounts, FeedService
from mmops.services.migration import MigrationService, SessionMigration
from mmops.services.settlement import SettlementService
from mmops.sim.loop import LoopConfig, LoopStats, TradingLoop

TOP_UP_BELOW = Decimal(10_000)  # a shared venue's free quote balance that gets topped up


@dataclass(slots=True)
class WorkflowResult:
    session_id: str
    venue: str
    sim_seconds: float
    wall_seconds: float = 0.0
    settle_ms: list[float] = field(default_factory=list)
    settle_positions: list[int] = field(default_factory=list)
    migrations: list[SessionMigration] = field(default_factory=list)
    loop: LoopStats = field(default_factory=LoopStats)
    feed: FeedCounts = field(default_factory=FeedCounts)
    triggered_placed: int = 0  # take-profits placed by runs a new fill triggered


@dataclass(frozen=True, slots=True)
class WorkflowPlan:
    pairs: tuple[str, ...]
    hours: float
    seed: int
    start: datetime
    step_seconds: int = 60
    settle_every: int = 180
    migrate_every: int = 3600
    settle: bool = True
    # Settle the pairs a step's new buy fills are in, in that step (what the settle trigger
    # does live); False leaves them to the interval (the load benchmark's scheduled runs).
    settle_on_fill: bool = True
    migrate: bool = True
    capital: Decimal = Decimal("50000")
    real_clock: bool = False  # trade on the system clock, sleeping step_seconds between steps


@dataclass(slots=True)
class SimFigures:
    elapsed: int = 0  # seconds of trading so far
    fills: int = 0
    take_profits: int = 0
    settlements: int = 0
    coverage: Decimal | None = None  # the lowest pair's, after the last settlement


Progress = Callable[[SimFigures], None]


async def run_workflow(
    rt: Runtime,
    plan: WorkflowPlan,
    session_id: str,
    venue: str | None = None,
    on_progress: Progress | None = None,
) -> WorkflowResult:
    """Trade for ``plan.hours`` hours, settling and migrating on schedule.

    With ``venue``, on a venue of that name, reset and funded with ``plan.capital`` per quote
    currency, prices seeded by ``plan.seed`` and starting at ``plan.start``; without, on the
    configured paper venue, topped up when short. ``on_progress`` is called after every step.
    """
    clock: SimulatedClock | SystemClock = (
        rt.clock if plan.real_clock else SimulatedClock(plan.start)
    )
    async with _open_venue(rt, plan, clock, venue) as exchange:
        quotes = sorted({p.split("/")[1] for p in plan.pairs})
        if venue is None:
            await _top_up(exchange, quotes, plan.capital)
        else:
            await reset_paper_venue(rt, exchange)
            for quote in quotes:
                await exchange.fund(quote, plan.capital)
        return await _trade(rt, plan, session_id, exchange, clock, on_progress)


def _open_venue(
    rt: Runtime, plan: WorkflowPlan, clock: SimulatedClock | SystemClock, venue: str | None
) -> AbstractAsyncContextManager[PaperExchange]:
    if venue is None:
        return open_paper_venue(rt, clock)
    # The price path starts with the run, so the same seed trades the same market whatever the
    # time of day the run starts (the demo ends now).
    return open_paper_venue(
        rt, clock, venue=venue, seed=plan.seed, price_origin=plan.start.timestamp()
    )


async def _top_up(exchange: PaperExchange, quotes: list[str], amount: Decimal) -> None:
    """Fund a shared venue's quote currencies that run short (other runs trade on it too)."""
    for quote in quotes:
        balance = (await exchange.balances()).get(quote)
        if balance is None or balance.free < TOP_UP_BELOW:
            await exchange.fund(quote, amount)


async def _trade(
    rt: Runtime,
    plan: WorkflowPlan,
    session_id: str,
    exchange: PaperExchange,
    clock: SimulatedClock | SystemClock,
    on_progress: Progress | None,
) -> WorkflowResult:
    progress = None if on_progress is None else _Progress(rt, session_id, clock, on_progress)
    if progress is not None:
        await progress.read_markets(exchange)
    loop = TradingLoop(
        venue=exchange,
        registry=rt.registry,
        live=rt.sessions,
        orders=rt.orders,
        order_reader=rt.orders,
        fills=rt.fills,
        clock=clock,
        # The venue's executions are recorded by mmops's fill feed, as on a live account.
        config=LoopConfig(plan.pairs, capital=plan.capital, seed=plan.seed, record_fills=False),
        session_id=session_id,
        path=rt.prices,
    )
    feed = build_feed(rt, exchange, PaperFeed(exchange), clock=clock)
    settlement = build_settlement(rt, exchange, dry_run=False, clock=clock)
    migration = build_migration(rt) if plan.migrate else None
    result = WorkflowResult(session_id, exchange.venue, plan.hours * 3600)
    started = time.perf_counter()
    await loop.start()
    steps = int(plan.hours * 3600 // plan.step_seconds)
    for n in range(1, steps + 1):
        if isinstance(clock, SimulatedClock):
            clock.advance(timedelta(seconds=plan.step_seconds))
        else:
            await asyncio.sleep(plan.step_seconds)
        await loop.step()
        new = await feed.catch_up()
        elapsed = n * plan.step_seconds
        if plan.settle and elapsed % plan.settle_every == 0:
            await _settle(settlement, session_id, result)
            if progress is not None:
                await progress.settled(result.settle_positions[-1])
        elif plan.settle and plan.settle_on_fill and (filled := _bought(new, session_id)):
            # What the settle trigger does on a live account, on this clock: the pairs that
            # just filled are settled now, not at the next interval.
            for run in await settlement.run(session_id, filled):
                result.triggered_placed += run.totals().get("placed", 0)
        if migration is not None and elapsed % plan.migrate_every == 0:
            result.migrations += await migration.run(session_id)
        if progress is not None:
            progress.stepped(elapsed, loop.stats.fills, len(result.settle_ms))
    await _finish(loop, feed, settlement if plan.settle else None, migration, result)
    result.wall_seconds = time.perf_counter() - started
    result.loop = loop.stats
    return result


async def _finish(
    loop: TradingLoop,
    feed: FeedService,
    settlement: SettlementService | None,
    migration: MigrationService | None,
    result: WorkflowResult,
) -> None:
    """End the session, record its last executions, then settle and migrate once more."""
    await loop.end()
    await feed.catch_up()
    result.feed = feed.counts
    if settlement is not None:
        await _settle(settlement, result.session_id, result)
    if migration is not None:
        result.migrations += await migration.run(result.session_id)


def _bought(fills: list[Fill], session_id: str) -> list[str]:
    """The pairs of the session that new buy fills are in."""
    return sorted({f.symbol for f in fills if f.side is Side.BUY and f.session_id == session_id})


async def _settle(settlement: SettlementService, session_id: str, result: WorkflowResult) -> None:
    t0 = time.perf_counter()
    [run] = await settlement.run(session_id)
    result.settle_ms.append((time.perf_counter() - t0) * 1000)
    result.settle_positions.append(run.totals().get("placed", 0))


class _Progress:
    """The figures an ``on_progress`` callback sees; coverage is read only for a listener."""

    def __init__(
        self,
        rt: Runtime,
        session_id: str,
        clock: SimulatedClock | SystemClock,
        report: Progress,
    ) -> None:
        self._rt = rt
        self._session_id = session_id
        self._clock = clock
        self._report = report
        self._coverage = CoverageService(rt.positions)
        self._markets: dict[str, Market] = {}
        self.figures = SimFigures()

    async def read_markets(self, exchange: PaperExchange) -> None:
        self._markets = await exchange.markets()

    async def settled(self, placed: int) -> None:
        self.figures.take_profits += placed
        self.figures.coverage = await self._lowest_coverage()

    def stepped(self, elapsed: int, fills: int, settlements: int) -> None:
        self.figures.elapsed, self.figures.fills = elapsed, fills
        self.figures.settlements = settlements
        self._report(self.figures)

    async def _lowest_coverage(self) -> Decimal | None:
        session = await self._rt.registry.get(self._session_id)
        if session is None:
            return None
        pairs = await self._coverage.session(session, self._markets, self._clock.now())
        return min((c.percent for c in pairs), default=None)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def report(rt: Runtime, plan: WorkflowPlan, result: WorkflowResult) -> dict[str, Any]:
    """Per-pair figures (reproducible for a seed) and the run's timings (not reproducible)."""
    session = await rt.registry.get(result.session_id)
    if session is None:
        raise LookupError(f"no session {result.session_id!r} in the registry")
    markets = {listing.market.symbol: listing.market for listing in CATALOG}
    end = plan.start + timedelta(seconds=result.sim_seconds)
    # Measured against the venue: only take-profits it shows open or filled count as covering.
    async with open_paper_venue(rt, rt.clock, venue=result.venue) as venue:
        reconciler = build_reconciler(rt, venue, dry_run=True)
        coverage = await CoverageService(rt.positions, reconciler).session(session, markets, end)
    analysis = await pair_pnl(rt.pool, result.session_id)
    by_pair = {row["symbol"]: row for row in analysis}
    pairs = []
    for c in coverage:
        row = by_pair.get(c.symbol, {})
        pairs.append({
            "pair": c.symbol,
            "fills": row.get("fills", 0),
            "positions": c.positions,
            "coverage_percent": str(c.percent),
            "take_profits_filled": row.get("take_profits_filled", 0),
            "fees": str(row.get("fees", 0)),
            "realized_pnl": str(row.get("realized_pnl", 0)),
            "open_quantity": str(row.get("open_quantity", 0)),
        })  # fmt: skip
    last = result.migrations[-1] if result.migrations else None
    return {
        "session": result.session_id,
        "pairs": pairs,
        "simulated_hours": plan.hours,
        "seed": plan.seed,
        # The venue's executions as mmops's fill feed recorded them (the live path).
        "feed": {
            "executions": result.feed.received,
            "recorded": result.feed.recorded,
            "unattributed": result.feed.unattributed,
        },
        "take_profits_on_fill": result.triggered_placed,
        "migration": None if last is None else {
            "state": last.state,
            "complete": last.state == "verified",
            "fills_in_postgres": sum(c.pg_fills for c in last.pairs.values()),
            "rejects": last.rejects,
        },
        "analysis_query": rows_json(analysis),
        # Take-profits per tier (mmops report; docs/MONITORING_QUERIES.md), JSON-ready.
        "tiers": rows_json(await tier_report(rt.pool, result.session_id)),
        "timings": {
            "wall_seconds": round(result.wall_seconds, 2),
            "settlement_runs": len(result.settle_ms),
            "settlement_ms_p50": round(percentile(result.settle_ms, 50), 2),
            "settlement_ms_p99": round(percentile(result.settle_ms, 99), 2),
        },
    }  # fmt: skip
