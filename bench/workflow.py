"""Workflow load benchmark: the paper trading loop on 10+ pairs with settlement every 3
simulated minutes and migration hourly, as ``mmops demo`` runs it, at a scale where each
settlement run covers 100+ positions.

Prints JSON: settlement runs, positions placed per run, average / p50 / p99 settlement latency
(wall clock), fills and take-profits (the same for a seed on every run), migration outcome,
wall time. Servers as the tests use them, else embedded.
Run: .venv/bin/python bench/workflow.py [--pairs 10 --hours 6 --seed 7]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmops import logs
from mmops.adapters.paper.catalog import SYMBOLS
from mmops.bootstrap import Runtime, Urls, open_paper_venue, open_runtime
from mmops.config import Settings
from mmops.entrypoints.workflow import WorkflowPlan, percentile, run_workflow
from tests.conftest import SessionIds
from tests.servers import bench_servers


async def run(
    redis_url: str, database_url: str, pairs: int, hours: float, seed: int, settle_every: int
) -> dict[str, object]:
    settings = Settings(redis_url=redis_url, database_url=database_url)  # type: ignore[arg-type]
    async with open_runtime(settings, Urls(redis_url, database_url)) as rt:
        # A session id of the seed's own: client ids derive from it, and the venue's partial
        # fills from those, so a random id gave other figures for the same seed.
        sid = f"bench-wf-{seed}-{settle_every}"
        await rt.session_records.delete(sid)
        await rt.sessions.delete_all(sid)
        # Only the scheduled runs settle (no run per fill): their load is what is measured.
        plan = WorkflowPlan(SYMBOLS[:pairs], hours, seed, datetime(2026, 1, 5, tzinfo=UTC),
                            settle_every=settle_every, settle_on_fill=False)  # fmt: skip
        try:
            result = await run_workflow(rt, plan, sid, venue=sid)
            trades = await venue_trades_digest(rt, sid)
        finally:
            cleaner = SessionIds()
            cleaner.made = [sid]
            await cleaner.cleanup(rt.redis)
        big = [
            ms for ms, n in zip(result.settle_ms, result.settle_positions, strict=True) if n >= 100
        ]
        last = result.migrations[-1]
        return {
            "bench": "workflow",
            "pairs": pairs,
            "simulated_hours": hours,
            "settle_every_s": settle_every,
            "settlement_runs": len(result.settle_ms),
            "positions_placed_max_per_run": max(result.settle_positions),
            "runs_with_100_plus_positions": len(big),
            "settlement_ms_avg": round(statistics.fmean(result.settle_ms), 2),
            "settlement_ms_p50": round(percentile(result.settle_ms, 50), 2),
            "settlement_ms_p99": round(percentile(result.settle_ms, 99), 2),
            "settlement_ms_avg_100_plus": round(statistics.fmean(big), 2) if big else None,
            "settlement_ms_p99_100_plus": round(percentile(big, 99), 2) if big else None,
            "fills_recorded": result.loop.fills,
            "take_profits_placed": sum(result.settle_positions) + result.triggered_placed,
            "venue_trades_digest": trades,
            "migration_state": last.state,
            "fills_migrated": sum(c.pg_fills for c in last.pairs.values()),
            "wall_s": round(result.wall_seconds, 2),
        }


async def venue_trades_digest(rt: Runtime, venue: str) -> str:
    """A digest of the venue's trades (ids, orders, times, amounts): equal for two runs only
    if they traded exactly alike."""
    async with open_paper_venue(rt, rt.clock, venue=venue) as exchange:
        trades, _ = await exchange.trades(0)
    lines = "\n".join(f"{t.id} {t.order_id} {t.timestamp.isoformat()} {t.amount}" for t in trades)
    return hashlib.blake2b(lines.encode(), digest_size=8).hexdigest()


def main(pairs: int, hours: float, seed: int) -> None:
    logs.configure("ERROR", "console")
    with bench_servers() as (redis_url, database_url):
        # Every 3 simulated minutes, as in production; then every 30 minutes, so that each
        # settlement run meets 100+ new positions (the load case).
        for settle_every in (180, 1800):
            print(json.dumps(asyncio.run(run(redis_url, database_url, pairs, hours, seed,
                                             settle_every))), flush=True)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--hours", type=float, default=6)
    parser.add_argument("--seed", type=int, default=7)
    a = parser.parse_args()
    main(a.pairs, a.hours, a.seed)
