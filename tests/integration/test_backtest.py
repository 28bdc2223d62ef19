"""The tier backtest on a recorded paper session (real Redis, PostgreSQL and the paper venue):
on the fill path the session recorded, the table it ran with reproduces its own take-profit
fills exactly; on settlement-time prices alone most of them; a table with higher markups never
fills more. docs/BACKTEST.md gives the figures."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mmops.adapters.paper.catalog import BY_SYMBOL, SYMBOLS
from mmops.adapters.paper.matching import fill_quantity
from mmops.adapters.paper.prices import PricePath
from mmops.adapters.paper.state import VenueKeys
from mmops.adapters.postgres.backtest_reads import read_history
from mmops.bootstrap import Urls, open_runtime
from mmops.config import Settings
from mmops.domain.backtest import PricePoint, ReplayData, SessionHistory, replay
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
    """The paper venue's prices at its 10 s match steps, computed from the seed: what the
    recorded fill path must hold (no shock was applied)."""
    path, points, t = PricePath(plan.seed, origin=START.timestamp()), [], START
    while t <= end:
        for pair in plan.pairs:
            q = path.quote(MARKETS[pair], t.timestamp())
            points.append(PricePoint(pair, t, q.bid, q.ask))
        t += timedelta(seconds=10)
    return points


def replay_data(history: SessionHistory) -> ReplayData:
    return ReplayData(history.session.id, MARKETS, history.buys, history.prices,
                      path=history.path, end=history.session.ended_at)  # fmt: skip


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
    # The fill path the loop recorded is the venue's own path, every 10 s of the session.
    recorded = {(p.symbol, p.at): (p.bid, p.ask) for p in history.path}
    expected = {(p.symbol, p.at): (p.bid, p.ask) for p in venue_path(plan, START + timedelta(
        hours=plan.hours)) if p.at > START}  # fmt: skip
    assert recorded == expected

    # On the recorded fill path with the venue's half fills: every position reproduced, the
    # same quantity at the same price, and the same realized P&L.
    exact = run_backtest(history, MARKETS, baseline, [HIGHER], fills=fill_quantity, resamples=200)
    assert exact.tier_mismatches == []
    assert exact.path_points == len(history.path)
    r = exact.reproduction
    assert (r.matched, r.only_real, r.only_replay) == (r.real_sold, 0, 0), r
    assert r.replay_pnl == r.real_pnl, r
    assert set(r.delays_s) == {0}, r
    # Execution by execution: the same times, prices, quantities and fees.
    baseline_replay = replay(replay_data(history), baseline, fill_quantity)
    replayed = sorted((f.position_id, f.at, f.price, f.quantity, f.fee)
                      for p in baseline_replay.positions for f in p.fills)  # fmt: skip
    real = sorted((s.position_id, s.at, s.price, s.quantity, s.fee) for s in history.sells)
    assert replayed == real

    # On settlement-time prices alone (all a live session has): every fill the replay sees
    # the venue made too, most positions reproduce exactly.
    coarse = run_backtest(replace(history, path=()), MARKETS, baseline, [HIGHER], resamples=200)
    c = coarse.reproduction
    assert coarse.path_points == 0
    assert c.only_replay == 0
    assert c.rate is not None and c.rate >= Decimal("0.6"), c
    # A table with higher markups never fills more, on either path.
    for report in (exact, coarse):
        assert closed(report, "higher") <= closed(report, "session")
