"""Scenario 1, concurrent workers: eight ``mmops settle`` processes started together over the
same sessions place every take-profit exactly once and leave no lock or claim behind.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from tests.integration.world import PAIRS, World
from tests.reliability.harness import (
    MakeScenario,
    audit,
    buy,
    cli_env,
    finish,
    grow,
    paper_sells,
    private_world,
    spawn,
)
from tests.reliability.ledger import Scenario

WORKERS = 8


# -- the scenario --------------------------------------------------------------------------


async def settle_together(w: World, s: Scenario, *args: str) -> list[dict[str, Any]]:
    """WORKERS ``mmops settle --json`` processes started at once; their session results."""
    env = cli_env(w, MMOPS_PAPER_FAULTS='{"latency_ms": 25}')  # runs long enough to overlap
    procs = [await spawn(env, "settle", "--json", *args) for _ in range(WORKERS)]
    runs = await asyncio.gather(*(finish(p) for p in procs))
    s.ran(len(runs))
    for run in runs:
        assert run.rc == 0, run.out + run.err
    return [session for run in runs for session in run.json()["sessions"]]


def check_reports(
    s: Scenario, results: Sequence[dict[str, Any]], sessions: Sequence[str], expected_placed: int
) -> int:
    """Check the workers' reports of one round; return how often a session was found locked."""
    states: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        states[r["session"]][r["state"]] += 1
    s.holds(
        "every worker found each session settled by itself (ok) or by another (locked)",
        all(set(states[sid]) <= {"ok", "locked"} and states[sid]["ok"] >= 1 for sid in sessions),
    )
    placed = sum(r["totals"].get("placed", 0) for r in results)
    if placed != expected_placed:
        print(f"placed {placed} across workers, expected {expected_placed}; states {states}")
    s.holds(
        "the workers' reports together place each needed take-profit once",
        placed == expected_placed,
    )
    return sum(c["locked"] for c in states.values())


async def test_eight_workers_at_once_place_each_take_profit_once_and_leave_no_lock(
    redis_url: str, admin_database_url: str, scenario: MakeScenario
) -> None:
    s = scenario(1, "Concurrent workers")
    async with private_world(redis_url, admin_database_url) as w:
        layout = {
            await w.start_session(PAIRS): PAIRS,
            await w.start_session(PAIRS[:5]): PAIRS[:5],
            await w.start_session(PAIRS[5:]): PAIRS[5:],
        }
        big = next(iter(layout))
        ages = [timedelta(minutes=m) for m in range(70, 230, 20)]  # tier 60 for the whole test
        for sid, pairs in layout.items():
            for pair in pairs:
                for age in ages if sid == big else ages[:6]:
                    await buy(w, sid, pair, age)
        needed = 10 * 8 + 2 * 5 * 6
        assert needed >= 100

        # Round 1: every worker discovers all three sessions; the locks share them out.
        results = await settle_together(w, s)
        locked = check_reports(s, results, list(layout), needed)
        a = await audit(w, layout, await paper_sells(w))
        a.settled(s)
        assert a.live == needed

        # Round 2: all eight on one session, where positions grew after they were covered
        # (each needs a second take-profit, next generation) and new ones were opened.
        grown = [p for p in a.positions if p.session_id == big][::4]
        for p in grown:
            await grow(w, p)
        for pair in PAIRS:
            for minutes in (80, 90):
                await buy(w, big, pair, timedelta(minutes=minutes))
        results = await settle_together(w, s, "--session", big)
        locked += check_reports(s, results, [big], len(grown) + 2 * len(PAIRS))
        s.holds(
            f"the locks were contended ({locked} times a worker found a session locked)", locked > 0
        )
        final = await audit(w, layout, await paper_sells(w))
        final.settled(s)
        assert len(final.positions) == 160 and final.live == 160 + len(grown)
