"""The tier backtest on a recorded paper session (real Redis, PostgreSQL and the paper venue):
the table the session ran with reproduces its own take-profit fills, and a table with higher
markups never fills more. docs/BACKTEST.md gives the figures these bounds come from."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mmops.adapters.paper.catalog import BY_SYMBOL, SYMBOLS
from mmops.adapters.paper.prices import PricePath
from mmops.adapters.paper.state import VenueKeys
from mmops.adapters.postgres.backtest_reads import read_history
from mmops.bootstrap import Urls, open_runtime
from mmops.config import Settings
from mmops.domain.backtest import PricePoint, SessionHistory
from mmops.domain.tiers import TierPolicy, TierTable
from mmops.entrypoints.workflow import WorkflowPlan, run_workflow
from mmops.services.backtest import BacktestReport, Candidate, run_backtest
from tests.conftest import SessionIds

START = datetime(2026, 1, 5, tzinfo=UTC)
MARKETS = {s: listing.market for s, listing in BY_SYMBOL.items()}
HIGHER = Candidate("higher", TierPolicy(default=TierTable.parse(
    {0: Decimal("0.012"), 60: Decimal("0.008"), 240: Decimal("0.005"), 720: Decimal("0.003"),
     1440: Decimal("0.001")})))  # fmt: skip


async def recorded_session(
    redis_url: str, database_url: str
) -> tuple[SessionHistory, WorkflowPlan]:
    settings = Settings(redis_url=redis_url, database_url=database_url)  # type: ignore[arg-type]
    sid = f"bt-{uuid.uuid4().hex[:8]}"
    plan = WorkflowPlan(SYMBOLS[:4], 6, 11, START)
    async with open_runtime(settings, Urls(redis_url, database_url)) as rt:
        try:
            await run_workflow(rt, plan, sid, venue=sid)  # trades, settles and migrates
            history = await read_history(rt.pool, sid)
        finally:
            cleaner = SessionIds()
            cleaner.made = [sid]
            await cleaner.cleanup(rt.redis)
            venue_keys = [k async for k in rt.redis.scan_iter(match=VenueKeys(sid).pattern)]
            if venue_keys:
                await rt.redis.delete(*venue_keys)
    assert history is not None
    return history, plan


def venue_path(plan: WorkflowPlan, end: datetime) -> list[PricePoint]:
    """The paper venue's own prices at its 10 s match steps (what it filled orders on)."""
    path, points, t = PricePath(plan.seed, origin=START.timestamp()), [], START
    while t <= end:
        for pair in plan.pairs:
            q = path.quote(MARKETS[pair], t.timestamp())
            points.append(PricePoint(pair, t, q.bid, q.ask))
        t += timedelta(seconds=10)
    return points


def closed(report: BacktestReport, label: str) -> int:
    [figures] = [t for t in report.tables if t.label == label]
    return figures.closed_positions


async def test_the_sessions_own_table_reproduces_its_take_profit_fills(
    redis_url: str, database_url: str
) -> None:
    history, plan = await recorded_session(redis_url, database_url)
    assert history.prices, "settlement recorded no prices for the session"
    assert history.sells, "the session has no take-profit fills to reproduce"
    assert not history.bad
    baseline = Settings().tier_policy()  # the session ran with the default settings
    assert history.session.ended_at is not None

    # On settlement-time prices alone: every fill the replay sees the venue made too (the
    # venue matches on a finer path), most positions reproduce exactly.
    runs = run_backtest(history, MARKETS, baseline, [HIGHER], resamples=200)
    assert runs.tier_mismatches == []
    r = runs.reproduction
    assert r.only_replay == 0
    assert r.rate is not None and r.rate >= Decimal("0.6"), r
    # On the venue's own path: reproduced within rounding (the venue's half fills and a
    # repricing between two halves are what is left).
    dense = run_backtest(history, MARKETS, baseline, [HIGHER], resamples=200,
                         path=venue_path(plan, history.session.ended_at))  # fmt: skip
    d = dense.reproduction
    assert d.rate is not None and d.rate >= Decimal("0.95"), d
    assert d.only_real == 0 and d.only_replay == 0
    assert abs(d.replay_pnl - d.real_pnl) <= Decimal("0.02") * abs(d.real_pnl)
    # A table with higher markups never fills more, on either path.
    for report in (runs, dense):
        assert closed(report, "higher") <= closed(report, "session")
