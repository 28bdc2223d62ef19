"""Work shared, not repeated: two and four ``mmops settle`` processes started together over 40
sessions settle each session exactly once in the round (one ``settlement_runs`` row, by one
worker), more than one worker takes a share, and no take-profit is placed twice; on one Redis
server and on a Redis Cluster."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from mmops.adapters.postgres.leases import PostgresWorkLeases
from mmops.bootstrap import Runtime, build_settlement
from tests.integration.world import PAIRS, World
from tests.reliability.harness import audit, buy, cli_env, finish, paper_sells, private_world, spawn

pytestmark = pytest.mark.reliability

SESSIONS = 40


async def part_runs(w: World, sid: str) -> list[tuple[str, str, str, list[str] | None]]:
    """The session's ``settlement_runs`` rows: (part, '' the whole; worker; state; pairs)."""
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT coalesce(details->>'part', ''), worker, state, details->'pairs'"
            " FROM settlement_runs WHERE session_id = %s",
            (sid,),
        )
        return await cur.fetchall()


@pytest.mark.parametrize(("workers", "redis"), [(2, "single"), (4, "single"), (4, "cluster")])
async def test_workers_split_the_sessions_each_settled_once_per_round(
    request: pytest.FixtureRequest, admin_database_url: str, workers: int, redis: str
) -> None:
    """On one Redis server and on a 3-master Redis Cluster alike."""
    fixture = "redis_url" if redis == "single" else "redis_cluster_url"
    redis_url: str = request.getfixturevalue(fixture)
    async with private_world(redis_url, admin_database_url) as w:
        layout: dict[str, list[str]] = {}
        for i in range(SESSIONS):
            pair = PAIRS[i % len(PAIRS)]
            sid = await w.start_session([pair])
            layout[sid] = [pair]
            await buy(w, sid, pair, timedelta(minutes=70))
        # Spare balance of every asset: two workers' balance snapshots of one account are the
        # balance reservations' concern (docs/ARCHITECTURE.md), not this test's.
        for pair in PAIRS:
            await w.exchange.fund(pair.split("/")[0], Decimal(1000))
        env = cli_env(w, MMOPS_PAPER_FAULTS='{"latency_ms": 10}', MMOPS_SETTLEMENT_CLAIM_BATCH="3")
        procs = [
            await spawn(env | {"MMOPS_WORKER_ID": f"w{i}"}, "settle", "--json")
            for i in range(workers)
        ]
        runs = await asyncio.gather(*(finish(p) for p in procs))
        for run in runs:
            assert run.rc == 0, run.out + run.err

        async with w.rt.pool.connection() as conn:
            cur = await conn.execute("SELECT session_id, worker, state FROM settlement_runs")
            rows = await cur.fetchall()
        per_session = Counter(sid for sid, _, _ in rows)
        assert per_session == Counter(dict.fromkeys(layout, 1))  # each once, by one worker
        assert {state for _, _, state in rows} == {"ok"}
        shares = Counter(worker for _, worker, _ in rows)
        print(f"{workers} workers, sessions settled per worker: {dict(shares)}")
        # Shared, not repeated: more than one worker took sessions (a process that starts
        # after the others have claimed everything rightly finds nothing due).
        assert len(shares) >= 2

        a = await audit(w, layout, await paper_sells(w))
        assert a.duplicate_client_ids == [] and a.doubled == []
        assert a.live == SESSIONS  # one take-profit per position, none twice

        # A run started once the others have ended is a round of its own: every session
        # again, nothing placed twice.
        again = await finish(await spawn(env, "settle", "--json"))
        assert again.rc == 0, again.err
        settled = again.json()["sessions"]
        assert len(settled) == SESSIONS
        assert sum(s["totals"].get("placed", 0) for s in settled) == 0


@pytest.mark.parametrize("redis", ["single", "cluster"])
async def test_a_big_session_is_settled_in_groups_by_several_workers(
    request: pytest.FixtureRequest, admin_database_url: str, redis: str
) -> None:
    """One session of all ten pairs, in groups of at most three that share no base asset
    (BTC/USD and BTC/EUR together): two workers started together (with the default claim
    batch) settle each group and the part '' (reconciliation, stop-loss, status) exactly once,
    and every position gets exactly one take-profit."""
    fixture = "redis_url" if redis == "single" else "redis_cluster_url"
    redis_url: str = request.getfixturevalue(fixture)
    async with private_world(redis_url, admin_database_url) as w:
        sid = await w.start_session(list(PAIRS))
        for pair in PAIRS:
            for _ in range(3):
                await buy(w, sid, pair, timedelta(minutes=70))
            await w.exchange.fund(pair.split("/")[0], Decimal(1000))
        env = cli_env(w, MMOPS_PAPER_FAULTS='{"latency_ms": 100}', MMOPS_SETTLE_GROUP_PAIRS="3")
        procs = [
            await spawn(env | {"MMOPS_WORKER_ID": f"w{i}"}, "settle", "--json") for i in range(2)
        ]
        runs = await asyncio.gather(*(finish(p) for p in procs))
        for run in runs:
            assert run.rc == 0, run.out + run.err

        rows = await part_runs(w, sid)
        parts = Counter(part for part, _, _, _ in rows)
        assert parts == Counter({"": 1, "g0": 1, "g1": 1, "g2": 1, "g3": 1}), rows
        assert {state for _, _, state, _ in rows} == {"ok"}
        groups = [set(pairs) for part, _, _, pairs in rows if part]
        assert sorted(len(g) for g in groups) == [1, 3, 3, 3]
        assert set().union(*groups) == set(PAIRS)
        assert any({"BTC/USD", "BTC/EUR"} <= g for g in groups)  # one base, one group
        shares = Counter(worker for _, worker, _, _ in rows)
        print(f"parts settled per worker: {dict(shares)}")
        # Which worker takes how many parts depends on when each process gets going (a worker
        # can finish all five before the other has started); that a claim takes one part of a
        # session, so a second worker gets the next, is checked without timing in
        # tests/integration/test_leases.py.

        a = await audit(w, {sid: list(PAIRS)}, await paper_sells(w))
        assert a.duplicate_client_ids == [] and a.doubled == []
        assert a.live == 3 * len(PAIRS)  # one take-profit per position, none twice


class SplitHeldBack:
    """A worker's leases whose split waits for ``go``: a worker slow to get going (a process
    still starting, a busy machine) after its run began."""

    def __init__(self, leases: PostgresWorkLeases, go: asyncio.Event) -> None:
        self._leases = leases
        self._go = go
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._leases, name)

    async def splittable(self, since: datetime, max_pairs: int) -> dict[str, list[str]]:
        self.waiting.set()
        await self._go.wait()
        return await self._leases.splittable(since, max_pairs)


async def test_a_worker_slow_to_split_settles_nothing_its_peer_settled_in_its_round(
    redis_url: str, admin_database_url: str
) -> None:
    """Two one-off runs started together: the one held back in its split while the other
    settles the whole session (its part '' and every group) joins that round, so it finds
    every part done. Before, a run joined the round only after its split: by then its peer
    had finished, so it had a round of its own and settled every part again."""
    async with private_world(redis_url, admin_database_url, settle_group_pairs=3) as w:
        sid = await w.start_session(list(PAIRS))

        def runtime(worker: str, **changes: Any) -> Runtime:
            settings = w.rt.settings.model_copy(update={"worker_id": worker})
            return replace(w.rt, settings=settings, **changes)

        go = asyncio.Event()
        held = SplitHeldBack(w.rt.leases, go)
        slow = build_settlement(runtime("slow", leases=held), w.exchange, dry_run=False)
        fast = build_settlement(runtime("fast"), w.exchange, dry_run=False)
        slow_run = asyncio.create_task(slow.run())
        try:
            await asyncio.wait_for(held.waiting.wait(), 10)
            fast_results = await fast.run()
        finally:
            go.set()
        slow_results = await slow_run

        rows = await part_runs(w, sid)
    assert Counter(part for part, _, _, _ in rows) == Counter(["", "g0", "g1", "g2", "g3"]), rows
    assert {worker for _, worker, _, _ in rows} == {"fast"}
    assert len(fast_results) == 5 and slow_results == []
