"""Settlement benchmark: one settlement run over fresh positions on the paper venue.

Prints one JSON object per case: wall time, exchange calls, time per position, and the ratio
to the batching lower bound = (1 + ceil(positions per pair / 15)) x exchange latency (one round
of market data, then the batches of the busiest pair, pairs running concurrently). Rate
limiting is off (the lower bound assumes no waiting).

Where the time goes, per position (medians): ``py_cpu_ms_per_position`` is this process's CPU
time during the run (settlement, the paper venue it calls, redis-py); ``redis_commands_per_
position`` and ``redis_cpu_ms_per_position`` are the server's ``INFO commandstats`` calls and
microseconds over the run (commands inside Lua scripts included). Those two count every
client of the server: exact on the embedded server or one of your own, not on a shared one.

Servers: MMOPS_TEST_REDIS_URL / MMOPS_TEST_DATABASE_URL as the tests use them, else embedded.
Run: .venv/bin/python bench/settlement.py [--repeat 3] [--case 10x100x0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmops import logs
from mmops.domain.ratelimit import TradingCounter
from tests.integration.world import PAIRS, world
from tests.servers import bench_servers

NO_LIMIT = TradingCounter(threshold=1e12, decay=1e12)
CASES = [(10, 10, 0), (10, 100, 0), (10, 10, 50), (10, 100, 50)]


async def one_run(
    redis_url: str, database_url: str, pairs: int, per_pair: int, latency_ms: int
) -> dict[str, float]:
    async with world(redis_url, database_url) as w:
        sid = await w.start_session(PAIRS[:pairs])
        for pair in PAIRS[:pairs]:
            await w.seed_positions(
                sid, pair, [5 + i for i in range(per_pair)], notional=Decimal(40)
            )
        venue = w.venue(counter=NO_LIMIT, latency=latency_ms / 1000)
        service = w.settlement(venue)
        before = await command_stats(w.rt.redis)
        started, cpu_started = time.perf_counter(), time.process_time()
        [result] = await service.run(sid)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        after = await command_stats(w.rt.redis)
        placed = result.totals().get("placed", 0)
        if placed != pairs * per_pair:
            raise RuntimeError(f"placed {placed} of {pairs * per_pair}: {result.errors()[:3]}")
        return {
            "positions": pairs * per_pair,
            "wall_s": wall,
            "cpu_s": cpu,
            "exchange_calls": venue._calls,
            "redis_calls": after[0] - before[0],
            "redis_usec": after[1] - before[1],
        }


async def command_stats(redis: Any) -> tuple[int, int]:
    """(commands, microseconds) the Redis server has run so far, all clients and commands."""
    stats = await redis.info("commandstats")
    return (
        sum(int(s["calls"]) for s in stats.values()),
        sum(int(s["usec"]) for s in stats.values()),
    )


async def main(repeat: int, cases: list[tuple[int, int, int]]) -> None:
    logs.configure("ERROR", "console")
    with bench_servers() as (redis_url, database_url):
        for pairs, per_pair, latency_ms in cases:
            runs = [
                await one_run(redis_url, database_url, pairs, per_pair, latency_ms)
                for _ in range(repeat)
            ]
            wall = statistics.median(r["wall_s"] for r in runs)
            positions = pairs * per_pair
            bound = (1 + math.ceil(per_pair / 15)) * latency_ms / 1000
            print(
                json.dumps(
                    {
                        "bench": "settlement",
                        "pairs": pairs,
                        "positions_per_pair": per_pair,
                        "positions": positions,
                        "latency_ms": latency_ms,
                        "runs": repeat,
                        "wall_s_median": round(wall, 4),
                        "wall_s_min": round(min(r["wall_s"] for r in runs), 4),
                        "exchange_calls": runs[0]["exchange_calls"],
                        "ms_per_position": round(wall * 1000 / positions, 4),
                        "py_cpu_ms_per_position": per_position(runs, "cpu_s", 1000),
                        "redis_commands_per_position": per_position(runs, "redis_calls", 1),
                        "redis_cpu_ms_per_position": per_position(runs, "redis_usec", 0.001),
                        "lower_bound_s": bound,
                        "ratio_to_lower_bound": round(wall / bound, 3) if bound else None,
                    }
                ),
                flush=True,
            )


def per_position(runs: list[dict[str, float]], name: str, scale: float) -> float:
    """The median of ``name`` over the runs, times ``scale``, per position."""
    positions = runs[0]["positions"]
    return round(statistics.median(r[name] for r in runs) * scale / positions, 4)


def case(text: str) -> tuple[int, int, int]:
    """``PAIRSxPER_PAIRxLATENCY_MS``, e.g. ``10x100x0``."""
    pairs, per_pair, latency = (int(part) for part in text.split("x"))
    return pairs, per_pair, latency


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--case", type=case, action="append", help="PAIRSxPER_PAIRxLATENCY_MS (repeatable)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.repeat, args.case or CASES))
