"""Tier backtest reproduction: how closely the session's own table, replayed, reproduces a
recorded paper session's take-profit fills, on three fill paths.

Each run records one paper session (tests/integration/test_backtest.py's: 4 pairs, 6 simulated
hours, seed 11, the default tiers; traded, settled and migrated on real Redis and PostgreSQL),
reads it back from the warehouse and replays it:

* ``recorded_path_venue_fills``: on the recorded fill path (``price_path``) with the venue's
  own fill rule (its half fills): what ``mmops tiers backtest`` does for a paper session;
* ``recorded_path_whole_fills``: the same path, each crossing filling the whole order;
* ``settlement_prices_only``: on the settlement-time tickers alone (all a live session has).

A position is matched when both sold the same quantity (within a lot) at the same average
price (within a tick). Prints one JSON object per run and path.

Servers: MMOPS_TEST_REDIS_URL / MMOPS_TEST_DATABASE_URL as the tests use them, else embedded.
Run: .venv/bin/python bench/backtest.py [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmops import logs
from mmops.adapters.paper.matching import fill_quantity
from mmops.config import Settings
from mmops.domain.backtest import whole_fills
from mmops.services.backtest import run_backtest
from tests.integration.test_backtest import HIGHER, MARKETS, closed, recorded_session
from tests.servers import bench_servers


async def main(runs: int) -> None:
    logs.configure("ERROR", "console")
    with bench_servers() as (redis_url, database_url):
        for n in range(runs):
            history, _ = await recorded_session(redis_url, database_url)
            ways = {
                "recorded_path_venue_fills": (history, fill_quantity),
                "recorded_path_whole_fills": (history, whole_fills),
                "settlement_prices_only": (replace(history, path=()), whole_fills),
            }
            for name, (h, fills) in ways.items():
                report = run_backtest(
                    h, MARKETS, Settings().tier_policy(), [HIGHER], fills=fills, resamples=50
                )
                r = report.reproduction
                print(json.dumps({
                    "bench": "backtest_reproduction", "run": n + 1, "fill_path": name,
                    "buy_fills": len(history.buys), "price_records": len(history.prices),
                    "path_points": report.path_points, "really_sold": r.real_sold,
                    "matched": r.matched, "only_real": r.only_real, "only_replay": r.only_replay,
                    "real_pnl": str(round(r.real_pnl, 6)),
                    "replay_pnl": str(round(r.replay_pnl, 6)),
                    "closed_session_table": closed(report, "session"),
                    "closed_higher_table": closed(report, "higher"),
                }), flush=True)  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    asyncio.run(main(parser.parse_args().runs))
