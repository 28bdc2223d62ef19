"""Scenario 2, settlement crashes: ``mmops settle`` SIGKILLed at random points, and right
between placing a take-profit and recording it, run after run; whatever a killed worker left,
nothing is ever placed twice, and a normal run afterwards covers every position exactly once
and leaves no lock behind.

The window between placing and recording is made wide and real with the paper venue's faults:
with ``timeout_after_accept`` every placement's answer is lost, so the worker looks each
client order id up (``latency_ms`` per call) before it records anything; a poller kills the
worker the moment the venue holds an order that has no ``tp_order:{S}:{O}`` record yet.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta

import pytest

from mmops.adapters.redis import keys
from tests.integration.world import PAIRS, World, world
from tests.reliability.harness import (
    MakeScenario,
    audit,
    buy,
    cli_env,
    finish,
    grow,
    kill,
    leftover_claims,
    paper_sells,
    private_world,
    spawn,
)
from tests.reliability.ledger import Scenario

KILLS = 21
CLUSTER_KILLS = 6  # the same kills on a Redis Cluster (test_killed_workers_on_a_redis_cluster_...)
SEED = 20261123  # the kill points are drawn from this; the timings around them are real
GROUPS = (PAIRS[0:3], PAIRS[3:6], PAIRS[6:9])  # one per session: Kraken-like per-pair counters
# The shortest deadline mmops allows, and no clock skew (one host): an order a killed worker
# left unanswered is past its deadline 3 s after it was fenced.
SHORT_TTLS = {
    "MMOPS_SETTLEMENT_LOCK_TTL": "1",
    "MMOPS_TP_ATTEMPT_TTL": "1",
    "MMOPS_TP_DEADLINE": "3",
    "MMOPS_TP_CLOCK_SKEW": "0",
}
LATENCY = {"latency_ms": 20}
LOST_ANSWERS = {**LATENCY, "timeout_after_accept": list(range(1, 60))}
MODES = ("placed-unrecorded", "after-lock", "from-start")


async def new_work(w: World, sid: str, pairs: Sequence[str], rng: random.Random) -> None:
    """What the trading loop did since the last run: new positions, positions that grew after
    they were covered, and one about to age into the next tier (its take-profit is repriced:
    cancelled and replaced, next generation)."""
    for pair in pairs:
        for _ in range(2):
            await buy(w, sid, pair, timedelta(minutes=rng.uniform(70, 230)))
    near_tier = timedelta(minutes=60) - timedelta(seconds=rng.uniform(1.0, 6.0))
    await buy(w, sid, rng.choice(pairs), near_tier)
    covered = [
        p
        for pair in pairs
        for p in await w.positions(sid, pair)
        if p.take_profits and not p.pending
    ]
    for p in rng.sample(covered, min(2, len(covered))):
        await grow(w, p)


async def claims_expired(w: World, session_ids: Sequence[str], timeout: float = 10.0) -> None:
    """Wait until a killed worker's lock and attempt claims have expired (their TTL)."""
    deadline = time.monotonic() + timeout
    while left := await leftover_claims(w, session_ids):
        assert time.monotonic() < deadline, f"claims still there after {timeout} s: {left}"
        await asyncio.sleep(0.05)


async def kill_once_placed_unrecorded(
    w: World, sid: str, proc: asyncio.subprocess.Process, known: set[str]
) -> None:
    """Kill the worker as soon as the venue holds a new order with no tp_order record."""
    deadline = time.monotonic() + 20
    while proc.returncode is None and time.monotonic() < deadline:
        fresh = [str(o) for o in await w.rt.redis.smembers(w.exchange.keys.open) if o not in known]
        if fresh:
            async with w.rt.redis.pipeline(transaction=False) as pipe:
                for oid in fresh:
                    pipe.exists(keys.tp_order(sid, oid))
                recorded = await pipe.execute()
            if not all(recorded):
                kill(proc)
                return
            known.update(fresh)
        await asyncio.sleep(0.002)


async def kill_after_lock(
    w: World, sid: str, proc: asyncio.subprocess.Process, delay: float
) -> None:
    """Kill the worker ``delay`` seconds after it took the session's lock."""
    deadline = time.monotonic() + 20
    while proc.returncode is None and not await w.rt.redis.exists(keys.settlement_lock(sid)):
        assert time.monotonic() < deadline, "the worker never took the lock"
        await asyncio.sleep(0.005)
    await asyncio.sleep(delay)
    if proc.returncode is None:
        kill(proc)


async def crash_once(
    w: World, sid: str, mode: str, rng: random.Random
) -> tuple[set[str], int | None]:
    """One worker on ``sid`` killed as ``mode`` says; returns the venue's order ids from before
    it started and its exit code (None: killed)."""
    before = {str(k) for k in await w.rt.redis.hkeys(w.exchange.keys.orders)}
    lose = mode == "placed-unrecorded" or (mode == "after-lock" and rng.random() < 0.5)
    faults = LOST_ANSWERS if lose else LATENCY
    env = cli_env(w, MMOPS_PAPER_FAULTS=json.dumps(faults), **SHORT_TTLS)
    proc = await spawn(env, "settle", "--session", sid, quiet=True)
    try:
        if mode == "placed-unrecorded":
            await kill_once_placed_unrecorded(w, sid, proc, set(before))
        elif mode == "after-lock":
            await kill_after_lock(w, sid, proc, rng.uniform(0.0, 0.25))
        else:
            await asyncio.sleep(rng.uniform(0.5, 1.3))
            if proc.returncode is None:
                kill(proc)
    finally:
        if proc.returncode is None:
            kill(proc)
        await asyncio.wait_for(proc.wait(), 10)
    return before, None if proc.returncode == -9 else proc.returncode


async def test_killed_workers_never_place_twice_and_the_next_run_covers_everything(
    redis_url: str, admin_database_url: str, scenario: MakeScenario
) -> None:
    s = scenario(2, "Settlement crashes")
    rng = random.Random(SEED)
    async with private_world(redis_url, admin_database_url) as w:
        layout = {await w.start_session(pairs): pairs for pairs in GROUPS}
        sessions = list(layout)
        outcomes: Counter[str] = Counter()
        for i in range(KILLS):
            sid = sessions[i % len(sessions)]  # the others' claims expire meanwhile
            await claims_expired(w, [sid])
            await new_work(w, sid, layout[sid], rng)
            mode = MODES[(i // len(sessions)) % len(MODES)]
            before, rc = await crash_once(w, sid, mode, rng)
            s.ran()
            a = await audit(w, layout, await paper_sells(w))
            a.always(s)
            landed = "finished" if rc is not None else "killed"
            landed += " between placing and recording" if a.unrecorded_ids - before else ""
            outcomes[f"{mode}: {landed}"] += 1
        print(f"kill outcomes: {dict(sorted(outcomes.items()))}")
        in_window = sum(n for k, n in outcomes.items() if k.endswith("recording"))
        s.holds(
            f"the kill landed between placing and recording (orders on the venue, not yet "
            f"recorded) in {in_window} of {KILLS} runs",
            in_window >= KILLS // 6,
        )

        await claims_expired(w, sessions)
        # The last killed worker's orders are past their deadline, and what it had reserved but
        # not sent is free again (lock TTL + deadline + skew = 4 s after it reserved).
        await asyncio.sleep(4.2)
        env = cli_env(w, **SHORT_TTLS)
        run = await finish(await spawn(env, "settle", "--json"))
        s.ran()
        assert run.rc == 0, run.out + run.err
        final = await audit(w, layout, await paper_sells(w))
        final.settled(s)
        assert len(final.positions) > 100
        repriced = sum(not o.live for o in final.orders)
        without_order = [
            oid
            for p in final.positions
            for oid, _ in p.take_profits
            if await w.rt.orders.get(p.session_id, p.symbol, oid) is None
        ]
        print(
            f"{len(final.positions)} positions, {final.live} live take-profits, {repriced} "
            f"cancelled by repricing; {len(without_order)} recorded take-profits have no "
            f"order record"
        )


async def test_a_crash_after_recording_coverage_still_leaves_the_take_profit_recorded_as_an_order(
    redis_url: str, database_url: str, scenario: MakeScenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = scenario(2, "Settlement crashes")
    async with world(redis_url, database_url) as w:
        sid = await w.start_session(["ETH/USD"])
        for minutes in (70, 80, 90):
            await buy(w, sid, "ETH/USD", timedelta(minutes=minutes))

        class Killed(BaseException):
            """The process dies here: nothing after this point runs."""

        record = w.rt.positions.record_coverage

        async def record_then_die(coverages: object) -> None:
            await record(coverages)  # type: ignore[arg-type]
            raise Killed  # the process dies right after recording

        with monkeypatch.context() as patch:
            patch.setattr(w.rt.positions, "record_coverage", record_then_die)
            with pytest.raises(Killed):
                await w.settlement().run(sid)
        await check_take_profits_are_orders(s, w, sid, "ETH/USD")  # already, before any rerun
        s.ran()
        [after] = await w.settlement().run(sid)  # the next, normal run
        s.ran()
        assert after.state == "ok"
        await check_take_profits_are_orders(s, w, sid, "ETH/USD")


async def check_take_profits_are_orders(s: Scenario, w: World, sid: str, pair: str) -> None:
    missing = [
        order_id
        for p in await w.positions(sid, pair)
        for order_id, _ in p.take_profits
        if await w.rt.orders.get(sid, pair, order_id) is None
    ]
    if missing:
        print(f"take-profits with no order record: {missing}")
    s.holds(
        "every recorded take-profit is also an order of its session (its fills have an order)",
        not missing,
    )


async def test_killed_workers_on_a_redis_cluster_never_place_twice(
    redis_cluster_url: str, admin_database_url: str, scenario: MakeScenario
) -> None:
    """The same kills, fewer of them, with every key on a 3-master Redis Cluster."""
    s = scenario(2, "Settlement crashes")
    rng = random.Random(SEED + 1)
    async with private_world(redis_cluster_url, admin_database_url) as w:
        layout = {await w.start_session(pairs): pairs for pairs in GROUPS}
        sessions = list(layout)
        for i in range(CLUSTER_KILLS):
            sid = sessions[i % len(sessions)]
            await claims_expired(w, [sid])
            await new_work(w, sid, layout[sid], rng)
            await crash_once(w, sid, MODES[i % len(MODES)], rng)
            s.ran()
            (await audit(w, layout, await paper_sells(w))).always(s)
        await claims_expired(w, sessions)
        # The last killed worker's orders are past their deadline, and what it had reserved but
        # not sent is free again (lock TTL + deadline + skew = 4 s after it reserved).
        await asyncio.sleep(4.2)
        run = await finish(await spawn(cli_env(w, **SHORT_TTLS), "settle", "--json"))
        s.ran()
        assert run.rc == 0, run.out + run.err
        (await audit(w, layout, await paper_sells(w))).settled(s)
