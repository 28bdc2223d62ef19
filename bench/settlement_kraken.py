"""Settlement benchmark through the live adapter: ``CcxtExchange`` against the local Kraken server.

One settlement run over fresh positions, with production pacing: no ``rate_limit_ms`` shortcut,
ccxt's own limiter off and the adapter's model of Kraken's REST call counter (Starter tier:
max 15, -1 per 3 s) and per-pair trading counter (Starter: 60, -1 per s) deciding every wait.
The server counts REST calls as Kraken documents (``rest_tier="starter"``: a call past the max
is refused with ``EAPI:Rate limit exceeded``) and adds 50 ms to every call.

Prints one JSON object per case: wall time, private calls, the REST counter's peak on the
server, REST refusals and trading-counter refusals (both should be 0: the adapter waits
instead), and what was placed or failed (the service waits for the trading counter before it
stamps a batch's deadline, ``Exchange.admit``, so none should be ``DeadlineRefused``). Target
(issue 16): 10 pairs x 10 positions under 2 s.

Servers: MMOPS_TEST_REDIS_URL / MMOPS_TEST_DATABASE_URL as the tests use them, else embedded.
Run: .venv/bin/python bench/settlement_kraken.py [--repeat 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmops import logs
from mmops.adapters.paper.catalog import BY_SYMBOL
from tests.integration.world import PAIRS, world
from tests.kraken_server import KrakenServer, make_ccxt_exchange
from tests.servers import bench_servers

CASES = [(10, 10), (10, 100)]
LATENCY_S = 0.05
TIER = "starter"


async def one_run(redis_url: str, database_url: str, pairs: int, per_pair: int) -> dict[str, Any]:
    async with world(redis_url, database_url) as w:
        with KrakenServer(rest_tier=TIER) as server:
            sid = await w.start_session(PAIRS[:pairs])
            for pair in PAIRS[:pairs]:
                await w.seed_positions(
                    sid, pair, [5 + i for i in range(per_pair)], notional=Decimal(40), fund=False
                )
                ticker = (await w.exchange.tickers([pair]))[pair]
                server.set_quote(pair, ticker.bid, ticker.ask)  # the paper venue's book
                server.fund(BY_SYMBOL[pair].market.base, Decimal(1_000_000))
            server.latency = LATENCY_S
            # Production pacing: the tier's counters, no rate_limit_ms (make_ccxt_exchange
            # drops its test shortcut when the server counts REST calls); a production timeout.
            async with make_ccxt_exchange(server, timeout=10.0) as exchange:
                service = w.settlement(exchange)
                started = time.perf_counter()
                [result] = await service.run(sid)
                wall = time.perf_counter() - started
            errors = result.errors()
            return {
                "wall_s": wall,
                "placed": result.totals().get("placed", 0),
                "errors": len(errors),
                "error_kinds": sorted({e.rsplit(": ", 1)[-1] for e in errors}),
                "private_calls": server.stats.private_calls,
                "rest_counter_peak": server.stats.rest_peak,
                "rest_refusals": server.stats.rest_refusals,
                "trading_counter_refusals": server.stats.rate_limit_refusals,
                "placement_calls": server.stats.placements,
            }


async def main(repeat: int) -> None:
    logs.configure("ERROR", "console")
    with bench_servers() as (redis_url, database_url):
        for pairs, per_pair in CASES:
            runs = [await one_run(redis_url, database_url, pairs, per_pair) for _ in range(repeat)]
            wall = statistics.median(r["wall_s"] for r in runs)
            print(
                json.dumps(
                    {
                        "bench": "settlement_kraken",
                        "tier": TIER,
                        "pairs": pairs,
                        "positions_per_pair": per_pair,
                        "positions": pairs * per_pair,
                        "latency_ms": int(LATENCY_S * 1000),
                        "runs": repeat,
                        "wall_s_median": round(wall, 3),
                        "wall_s_max": round(max(r["wall_s"] for r in runs), 3),
                        "placed": runs[0]["placed"],
                        "errors": runs[0]["errors"],
                        "error_kinds": runs[0]["error_kinds"],
                        "private_calls": runs[0]["private_calls"],
                        "placement_calls": runs[0]["placement_calls"],
                        "rest_counter_peak": max(r["rest_counter_peak"] for r in runs),
                        "rest_refusals": sum(r["rest_refusals"] for r in runs),
                        "trading_counter_refusals": sum(
                            r["trading_counter_refusals"] for r in runs
                        ),
                        "target_s": 2.0 if per_pair == 10 else None,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    asyncio.run(main(parser.parse_args().repeat))
