"""The whole paper workflow: trading → settlement → migration → analysis, on one clock.

``run_workflow`` drives the paper trading loop step by step on a simulated clock (fast) and runs
settlement every ``settle_every`` and migration every ``migrate_every`` simulated seconds, in
this process, through the same services the CLI and the daemon use. ``report`` gathers the
figures ``mmops demo`` prints.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.paper.catalog import CATALOG
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.postgres.analysis import pair_pnl
from mmops.bootstrap import Runtime, build_migration, build_settlement
from mmops.services.coverage import CoverageService
from mmops.services.migration import SessionMigration
from mmops.sim.loop import LoopConfig, LoopStats, TradingLoop


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
    migrate: bool = True
    capital: Decimal = Decimal("50000")


async def run_workflow(
    rt: Runtime, plan: WorkflowPlan, session_id: str, venue: str
) -> WorkflowResult:
    """Trade for ``plan.hours`` simulated hours, settling and migrating on schedule."""
    clock = SimulatedClock(plan.start)
    # The price path starts with the run, so the same seed trades the same market whatever the
    # time of day the run starts (the demo ends now).
    exchange = PaperExchange(
        rt.redis, clock, venue=venue, seed=plan.seed, price_origin=plan.start.timestamp()
    )
    await exchange.reset()
    for quote in sorted({p.split("/")[1] for p in plan.pairs}):
        await exchange.fund(quote, plan.capital)
    config = LoopConfig(plan.pairs, capital=plan.capital, seed=plan.seed)
    loop = TradingLoop(exchange, rt.registry, rt.sessions, rt.orders, rt.orders, rt.fills, clock,
                       config, session_id)  # fmt: skip
    settlement = build_settlement(rt, exchange, dry_run=False, clock=clock)
    migration = build_migration(rt)
    result = WorkflowResult(session_id, venue, plan.hours * 3600)
    started = time.perf_counter()
    await loop.start()
    steps = int(plan.hours * 3600 // plan.step_seconds)
    for n in range(1, steps + 1):
        clock.advance(timedelta(seconds=plan.step_seconds))
        await loop.step()
        elapsed = n * plan.step_seconds
        if plan.settle and elapsed % plan.settle_every == 0:
            await _settle(settlement, session_id, result)
        if plan.migrate and elapsed % plan.migrate_every == 0:
            result.migrations += await migration.run(session_id)
    await loop.end()
    if plan.settle:
        await _settle(settlement, session_id, result)
    if plan.migrate:
        result.migrations += await migration.run(session_id)
    result.wall_seconds = time.perf_counter() - started
    result.loop = loop.stats
    return result


async def _settle(settlement: Any, session_id: str, result: WorkflowResult) -> None:
    t0 = time.perf_counter()
    [run] = await settlement.run(session_id)
    result.settle_ms.append((time.perf_counter() - t0) * 1000)
    result.settle_positions.append(run.totals().get("placed", 0))


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
    coverage = await CoverageService(rt.positions).session(session, markets, end)
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
        "fills_recorded_twice": result.loop.duplicates_recorded,
        "migration": None if last is None else {
            "state": last.state,
            "complete": last.state == "verified",
            "fills_in_postgres": sum(c.pg_fills for c in last.pairs.values()),
            "rejects": last.rejects,
        },
        "analysis_query": [
            {k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()}
            for row in analysis
        ],
        "timings": {
            "wall_seconds": round(result.wall_seconds, 2),
            "settlement_runs": len(result.settle_ms),
            "settlement_ms_p50": round(percentile(result.settle_ms, 50), 2),
            "settlement_ms_p99": round(percentile(result.settle_ms, 99), 2),
        },
    }  # fmt: skip
