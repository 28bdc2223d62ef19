"""Scale-out benchmark: 1, 2 and 4 `mmops settle` worker processes settling 40 sessions x 10
pairs x 20 positions on one paper venue (one account) with 50 ms per venue call.

Each case seeds fresh sessions (so every case has the same uncovered work), starts the worker
processes at once against the same Redis and PostgreSQL, and waits for all to exit. Printed as
JSON per case: wall time, sessions per second, CPU used by the workers (user + system, and
as a share of the machine's cores), positions covered, positions sold more than they hold,
how many workers settled each session (from ``settlement_runs``), and the speed-up over one
worker in the same run. The venue's per-pair trading counter is lifted
(``MMOPS_PAPER_COUNTER=off``): 800 orders per pair would otherwise wait on it whatever the
worker count.

``--group-pairs N`` settles each session in groups of at most N pairs sharing no base asset
(``MMOPS_SETTLE_GROUP_PAIRS``), so several workers can share one big session: e.g.
``--sessions 1 --positions 100 --group-pairs 3 --workers 1 2``.

Servers: MMOPS_TEST_REDIS_URL / MMOPS_TEST_DATABASE_URL as the tests use them, else embedded.
Run: .venv/bin/python bench/scale.py [--sessions 40 --pairs 10 --positions 20 --workers 1 2 4]
     [--group-pairs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmops import logs
from mmops.adapters.postgres import schema
from tests.integration.world import PAIRS, World, world
from tests.servers import Servers, throwaway_database

LATENCY = 0.05


async def seed(w: World, sessions: int, pairs: int, positions: int) -> list[str]:
    ids = []
    for _ in range(sessions):
        sid = await w.start_session(PAIRS[:pairs])
        for pair in PAIRS[:pairs]:
            await w.seed_positions(sid, pair, [5 + i for i in range(positions)],
                                   notional=Decimal(40))  # fmt: skip
        ids.append(sid)
    return ids


def run_workers(n: int, env: dict[str, str]) -> tuple[float, float, list[int]]:
    """Start ``n`` settle processes at once; (wall seconds, CPU seconds, exit codes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mmops.entrypoints", "settle", "--json"],
            env={**env, "MMOPS_WORKER_ID": f"bench-{i}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(n)
    ]
    codes = [p.wait(timeout=1800) for p in procs]
    for p in procs:
        assert p.stderr is not None
        err = p.stderr.read().decode(errors="replace").strip()
        if err:
            print(err[-2000:], file=sys.stderr)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, codes


async def outcome(w: World, ids: list[str], pairs: int) -> dict[str, Any]:
    """Coverage, positions sold more than they hold (live take-profits on the venue over their
    filled quantity: a duplicate), and how many workers settled each session."""
    from mmops.adapters.paper.state import PaperOrder

    venue = {
        oid: PaperOrder.decode(str(v)).order
        for oid, v in (await w.rt.redis.hgetall(w.exchange.keys.orders)).items()
    }
    covered = total = oversold = 0
    for sid in ids:
        for pair in PAIRS[:pairs]:
            for p in await w.positions(sid, pair):
                total += 1
                covered += p.uncovered == 0
                live = [venue[oid] for oid, _ in p.take_profits if oid in venue]
                oversold += sum((o.amount for o in live if o.live), Decimal(0)) > p.filled
    async with w.rt.pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT session_id, count(DISTINCT worker), count(*) FROM settlement_runs"
                " WHERE session_id = ANY(%s) AND state <> 'locked' GROUP BY session_id",
                [ids],
            )
        ).fetchall()
    workers_per_session = Counter(int(r[1]) for r in rows)
    async with w.rt.pool.connection() as conn:
        by_worker = await (
            await conn.execute(
                "SELECT worker, count(*) FROM settlement_runs WHERE session_id = ANY(%s)"
                " GROUP BY worker ORDER BY worker",
                [ids],
            )
        ).fetchall()
    return {
        "positions": total,
        "covered": covered,
        "positions_oversold": oversold,
        "sessions_settled": len(rows),
        "workers_per_session": {str(k): v for k, v in sorted(workers_per_session.items())},
        "runs_per_session_max": max((int(r[2]) for r in rows), default=0),
        "runs_per_worker": {str(r[0]): int(r[1]) for r in by_worker},
    }


async def main(args: argparse.Namespace) -> None:
    logs.configure("ERROR", "console")
    servers = Servers()
    try:
        base_rate: float | None = None
        for n in args.workers:
            # Each case on a database and a venue of its own: the sessions and open orders of
            # an earlier case would otherwise be settled and read again by the later ones.
            with throwaway_database(servers.admin_database_url(), "mmops_bench") as database:
                schema.upgrade(database)
                result = await one_case(servers.redis_url(), database, n, args)
            base_rate = base_rate or result["sessions_per_s"]
            result["speed_up"] = round(result["sessions_per_s"] / base_rate, 3)
            print(json.dumps(result), flush=True)
    finally:
        servers.close()


async def one_case(
    redis_url: str, database_url: str, n: int, args: argparse.Namespace
) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        async with world(redis_url, database_url) as w:
            await w.exchange.fund("USD", Decimal(10_000_000))
            env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
            env.update({
                "MMOPS_REDIS_URL": redis_url, "MMOPS_DATABASE_URL": database_url,
                "MMOPS_DATA_DIR": tmp, "MMOPS_PAPER_VENUE": w.exchange.venue,
                "MMOPS_PAPER_FAULTS": json.dumps({"latency_ms": int(LATENCY * 1000)}),
                "MMOPS_PAPER_COUNTER": "off", "MMOPS_LOG_LEVEL": "ERROR",
                "MMOPS_FILL_EVENTS_STREAM": w.rt.settings.fill_events_stream,
                "MMOPS_SETTLE_GROUP_PAIRS": str(args.group_pairs),
            })  # fmt: skip
            ids = await seed(w, args.sessions, args.pairs, args.positions)
            wall, cpu, codes = run_workers(n, env)
            result = await outcome(w, ids, args.pairs)
            rate = len(ids) / wall
            return {
                "bench": "scale", "workers": n, "sessions": len(ids),
                "pairs": args.pairs, "positions_per_pair": args.positions,
                "group_pairs": args.group_pairs,
                "latency_ms": int(LATENCY * 1000), "wall_s": round(wall, 2),
                "sessions_per_s": round(rate, 3), "cpu_s": round(cpu, 2),
                "cpu_share_of_cores": round(cpu / wall / cores, 3),
                "exit_codes": codes, **result,
            }  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--positions", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--group-pairs", type=int, default=0, help="0: never split a session")
    asyncio.run(main(parser.parse_args()))
