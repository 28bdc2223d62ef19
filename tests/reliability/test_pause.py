"""Scenarios 8 and 9, paused workers: ``mmops settle`` processes SIGSTOPped as their orders
reach the venue (a GC pause, a VM stall, a laptop lid), held past every TTL while fresh
workers settle the same sessions, then resumed; and a worker whose session lock is taken away
mid-run.

The pause lands at varied moments of the send, made wide with latency (the paper venue's
``latency_ms``, the Kraken test server's ``latency``): right after the fence (pending markers
written, the batch not yet at the venue or still in flight), right as the first batch reached
the venue, after the venue accepted a batch whose answer was lost (the worker is looking its
client ids up), and at a random point of the run. While the paused workers are held, fresh
workers cover every position and every take-profit on the venue fills, which frees its client
id on a venue with open-only uniqueness (Kraken's ``cl_ord_id``): a resumed worker that sent a
stale request would then be *accepted* a second time and sell inventory the account no longer
has. So the venue's accepted orders per client id and its duplicate-client-id refusals are
both counted: neither may show a second send.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from mmops.adapters.paper.catalog import BY_SYMBOL
from mmops.adapters.redis import keys
from mmops.domain.ids import client_order_id
from tests.integration.world import PAIRS, World
from tests.kraken_server import KrakenServer
from tests.reliability.harness import (
    Audit,
    Finished,
    MakeScenario,
    VenueOrder,
    audit,
    buy,
    check,
    cli_env,
    finish,
    paper_sells,
    private_world,
    spawn,
)
from tests.reliability.ledger import Scenario

SEED = 20261126  # the pause moments' delays are drawn from this; the timings around them are real
LOCK_TTL, ATTEMPT_TTL, DEADLINE, SKEW = 2, 5, 3, 1  # seconds; attempt TTL > deadline + skew
TTLS = {
    "MMOPS_SETTLEMENT_LOCK_TTL": str(LOCK_TTL),
    "MMOPS_TP_ATTEMPT_TTL": str(ATTEMPT_TTL),
    "MMOPS_TP_DEADLINE": str(DEADLINE),
    "MMOPS_TP_CLOCK_SKEW": str(SKEW),
}
PAST_EVERY_TTL = max(LOCK_TTL, ATTEMPT_TTL, DEADLINE + SKEW) + 0.5  # seconds held, at least
LOGS = {"MMOPS_LOG_FORMAT": "json", "MMOPS_LOG_LEVEL": "INFO"}
AGES = [timedelta(minutes=m) for m in range(70, 230, 8)]  # 20 per pair, tier 60 throughout
SLOW_PAPER = {"latency_ms": 250}
SLOW_KRAKEN = 0.3  # seconds the Kraken server holds every request before acting on it
WAIT_FOR_MOMENT = 20.0  # seconds a watcher waits for its moment before giving up

# What each paused worker's watcher waits for before it sends SIGSTOP.
FENCED = "fenced"  # pending markers written: the batch is not at the venue yet, or in flight
LANDED = "landed"  # the venue holds the session's first orders; later batches are still to go
UNRECORDED = "unrecorded"  # answers lost: the venue holds orders the worker is looking up
LATER = "later"  # a random moment after the worker took the session's lock


# -- the venues ----------------------------------------------------------------------------


class CountingKraken(KrakenServer):
    """The Kraken test server, also counting the orders it refuses as a duplicate client id
    (each refusal is a second send of that id)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.duplicate_refusals: list[str] = []

    def _refusal(self, *args: Any, **kw: Any) -> str | None:
        error: str | None = super()._refusal(*args, **kw)  # type: ignore[misc]
        spec = args[1] if len(args) > 1 else kw["spec"]
        if error is not None and "duplicate" in error.lower():
            self.duplicate_refusals.append(str(spec.cl_ord_id))
        return error


@dataclass
class Venue:
    """One venue of the scenario: how workers reach it, what it holds, and how to fill it."""

    name: str
    w: World
    kraken: CountingKraken | None = None
    sessions: dict[str, list[str]] = field(default_factory=dict)  # id → pairs

    def env(self, **extra: str) -> dict[str, str]:
        env = cli_env(self.w, **TTLS, **LOGS, **extra)
        if self.kraken is not None:
            key, secret = self.kraken.new_key()  # a key per process: nonces of its own
            env.update(
                MMOPS_EXCHANGE="kraken",
                MMOPS_EXCHANGE_URL=self.kraken.url,
                MMOPS_API_KEY=key,
                MMOPS_API_SECRET=secret,
                PYTHONPATH=os.pathsep.join(
                    [str(fast_ccxt_pacing()), *filter(None, [os.environ.get("PYTHONPATH")])]
                ),
            )
        return env

    async def sells(self) -> list[VenueOrder]:
        if self.kraken is None:
            return await paper_sells(self.w)
        return [
            VenueOrder(
                o["txid"], o["cl_ord_id"] or "", Decimal(o["vol"]), o["status"] != "canceled"
            )
            for o in self.kraken.orders()
            if o["descr"]["type"] == "sell"
        ]

    async def fund(self, asset: str, amount: Decimal) -> None:
        if self.kraken is None:
            await self.w.exchange.fund(asset, amount)
        else:
            self.kraken.fund(asset, amount)

    async def fill_everything(self) -> int:
        """Fill every open sell (a filled take-profit frees its client id on Kraken)."""
        if self.kraken is not None:
            live = [o["txid"] for o in self.kraken.orders() if o["status"] == "open"]
            for txid in live:
                self.kraken.fill(txid)
            return len(live)
        pairs = sorted({p for ps in self.sessions.values() for p in ps})
        for pair in pairs:
            await self.w.exchange.shock(pair, Decimal("1.05"))
        trades = []
        for _ in range(50):  # fills may be partial: walk the spiked path until none is open
            await asyncio.sleep(0.02)
            trades += await self.w.exchange.match(step_seconds=0.01)
            if not await self.w.rt.redis.scard(self.w.exchange.keys.open):
                break
        for pair in pairs:
            await self.w.exchange.shock(pair, Decimal(1))  # back on the path: TPs rest again
        left = await self.w.rt.redis.scard(self.w.exchange.keys.open)
        assert left == 0, f"{left} orders still open on the paper venue after the price spike"
        return len({t.order_id for t in trades})


@cache
def fast_ccxt_pacing() -> Path:
    """A ``sitecustomize`` for worker processes on the local Kraken server: no REST pacing
    (the adapter's model of Kraken's REST call counter, Starter: one call per 3 s past a burst
    of 15, made unlimited), as ``make_ccxt_exchange`` runs in-process against a server that
    does not count REST calls. The client's model of the trading counter is untouched."""
    folder = Path(tempfile.mkdtemp(prefix="mmops-ccxt-pacing-"))
    (folder / "sitecustomize.py").write_text(
        "from dataclasses import replace as _replace\n"
        "from mmops.domain.ratelimit import KRAKEN_TIERS as _TIERS, TradingCounter as _Counter\n"
        "for _name, _tier in list(_TIERS.items()):\n"
        "    _TIERS[_name] = _replace(_tier, rest=_Counter(1e9, 1e9))\n"
    )
    return folder


@pytest.fixture
def kraken() -> Iterator[CountingKraken]:
    with CountingKraken(client_ids="open") as server:
        yield server
        assert server.stats.errors == []


# -- seeding -------------------------------------------------------------------------------


async def seed(v: Venue, layout: Sequence[Sequence[str]]) -> None:
    """One session per entry of ``layout`` (its pairs, none shared: per-pair trading counters),
    20 filled buys per pair, and the venue funded with twice what was bought: a take-profit
    sent a second time after the first filled would find the coins to sell."""
    for pairs in layout:
        sid = await v.w.start_session(pairs)
        v.sessions[sid] = list(pairs)
        for pair in pairs:
            for age in AGES:
                await buy(v.w, sid, pair, age)  # funds the paper venue with what it bought
    bought: Counter[str] = Counter()
    for sid, pairs in v.sessions.items():
        for pair in pairs:
            for p in await v.w.positions(sid, pair):
                bought[BY_SYMBOL[pair].market.base] += p.filled
    for asset, qty in bought.items():
        await v.fund(asset, qty if v.kraken is None else 2 * qty)
    if v.kraken is not None:
        for pair in {p for ps in v.sessions.values() for p in ps}:
            ticker = (await v.w.exchange.tickers([pair]))[pair]
            v.kraken.set_quote(pair, ticker.bid, ticker.ask)  # take-profits rest above the bid
    await v.w.exchange.match()  # starts the paper venue's match clock


async def client_ids(v: Venue, sid: str) -> dict[str, str]:
    """Client order id → position id, for generations 0-3 of every position of ``sid``."""
    ids = {}
    for pair in v.sessions[sid]:
        for p in await v.w.positions(sid, pair):
            for g in range(4):
                ids[client_order_id(sid, p.position_id, g)] = p.position_id
    return ids


# -- pausing -------------------------------------------------------------------------------


@dataclass
class Paused:
    sid: str
    moment: str
    proc: asyncio.subprocess.Process
    output: asyncio.Task[Finished]
    stopped_at: float | None = None
    delay: float = 0.0


async def poll(
    proc: asyncio.subprocess.Process, ready: Callable[[], Awaitable[bool]], timeout: float
) -> bool:
    """Poll ``ready`` until true (→ True) or the process exits or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while proc.returncode is None and time.monotonic() < deadline:
        if await ready():
            return True
        await asyncio.sleep(0.002)
    return False


async def any_pending(v: Venue, sid: str, ids: Mapping[str, str]) -> bool:
    for pair in v.sessions[sid]:
        if any(x.pending for x in await v.w.positions(sid, pair)):
            return True
    return False


async def any_landed(v: Venue, sid: str, ids: Mapping[str, str]) -> bool:
    return any(o.client_order_id in ids for o in await v.sells())


async def any_unrecorded(v: Venue, sid: str, ids: Mapping[str, str]) -> bool:
    mine = [o.order_id for o in await v.sells() if o.client_order_id in ids]
    if not mine:
        return False
    async with v.w.rt.redis.pipeline(transaction=False) as pipe:
        for oid in mine:
            pipe.exists(keys.tp_order(sid, oid))
        return not all(await pipe.execute())


async def lock_taken(v: Venue, sid: str, ids: Mapping[str, str]) -> bool:
    return bool(await v.w.rt.redis.exists(keys.settlement_lock(sid)))


MOMENTS = {FENCED: any_pending, LANDED: any_landed, UNRECORDED: any_unrecorded, LATER: lock_taken}


async def pause_at_moment(v: Venue, p: Paused) -> None:
    """SIGSTOP ``p``'s worker at its moment (nothing if it finished first)."""
    ids = await client_ids(v, p.sid)
    reached = MOMENTS[p.moment]
    if not await poll(p.proc, lambda: reached(v, p.sid, ids), WAIT_FOR_MOMENT):
        return
    if p.moment == LATER:
        await asyncio.sleep(p.delay)
    if p.proc.returncode is None:
        p.proc.send_signal(signal.SIGSTOP)
        p.stopped_at = time.monotonic()


async def start_paused(v: Venue, moments: Mapping[str, str], rng: random.Random) -> list[Paused]:
    """One slow worker per session, each stopped at its session's moment."""
    paused = []
    for sid, moment in moments.items():
        faults = dict(SLOW_PAPER)
        if moment == UNRECORDED:
            faults["timeout_after_accept"] = [1]  # type: ignore[assignment]
        proc = await spawn(
            v.env(MMOPS_PAPER_FAULTS=json.dumps(faults)), "settle", "--json", "--session", sid
        )
        output = asyncio.create_task(finish(proc))  # read as it writes: a full pipe blocks
        paused.append(Paused(sid, moment, proc, output, delay=rng.uniform(0.2, 1.2)))
    await asyncio.gather(*(pause_at_moment(v, p) for p in paused))
    return paused


def events(run: Finished) -> list[dict[str, Any]]:
    """The structured log events a worker wrote (one JSON object a line on stderr)."""
    found = []
    for line in run.err.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and "event" in event:
            found.append(event)
    return found


def duplicate_refusals(runs: Sequence[Finished]) -> list[str]:
    """Orders the venue refused as a duplicate client id, as the workers logged them."""
    return [
        f"{e.get('session')}/{e.get('position')}: {e.get('error')}"
        for run in runs
        for e in events(run)
        if e["event"] == "tp.rejected" and "duplicate" in str(e.get("error", "")).lower()
    ]


async def settle_fresh(v: Venue, s: Scenario) -> list[dict[str, Any]]:
    """A fresh worker on a fast venue over every session; its session results."""
    run = await finish(await spawn(v.env(), "settle", "--json"))
    s.ran()
    assert run.out, run.err[-3000:]
    results: list[dict[str, Any]] = run.json()["sessions"]
    assert {r["session"] for r in results} == set(v.sessions), results
    return results


async def settle_until_covered(v: Venue, s: Scenario) -> None:
    """Fresh workers, round after round (a marker of a paused worker may still await its
    lookup), until every position is covered; at most three rounds."""
    for _ in range(3):
        results = await settle_fresh(v, s)
        a = await audit(v.w, v.sessions, await v.sells())
        a.always(s)
        if not a.uncovered and all(r["state"] == "ok" for r in results):
            return
    print(f"fresh workers left {a.uncovered[:5]}; results {[r['state'] for r in results]}")
    s.holds("fresh workers settle the paused workers' sessions to completion", False)


def check_single_sends(s: Scenario, a: Audit, refusals: Sequence[str]) -> None:
    check(
        s,
        "no client order id sent for two orders: the venue accepted each client id once",
        a.duplicate_client_ids,
    )
    check(
        s,
        "no client order id sent for two orders: the venue refused none as a duplicate",
        refusals,
    )
    check(s, "no position has two live take-profits (per position and generation)", a.doubled)
    check(s, "Σ live take-profit quantity of every position ≤ its filled quantity", a.oversold)


# -- scenario 8: paused workers --------------------------------------------------------------

PAPER_LAYOUT = [PAIRS[0:2], PAIRS[2:4], PAIRS[4:6], PAIRS[6:8]]
PAPER_MOMENTS = (FENCED, LANDED, UNRECORDED, LATER)
KRAKEN_LAYOUT = [PAIRS[0:1], PAIRS[1:2], PAIRS[2:3]]
KRAKEN_MOMENTS = (FENCED, LANDED, LATER)


async def pause_scenario(v: Venue, s: Scenario, moments: Sequence[str]) -> None:
    rng = random.Random(SEED)
    t0 = time.monotonic()
    if v.kraken is not None:
        v.kraken.latency = SLOW_KRAKEN
    paused = await start_paused(v, dict(zip(v.sessions, moments, strict=True)), rng)
    s.ran(len(paused))
    stopped = [p for p in paused if p.stopped_at is not None]
    print("paused:", {p.moment: p.stopped_at is not None for p in paused})
    s.holds(
        "every worker was stopped at its moment of the send (after the fence, as its first "
        "orders reached the venue, with answers lost, at a random point)",
        len(stopped) == len(paused),
    )
    if v.kraken is not None:
        v.kraken.latency = 0.0
    last_stop = max(p.stopped_at for p in stopped if p.stopped_at is not None)
    await asyncio.sleep(max(0.0, last_stop + PAST_EVERY_TTL - time.monotonic()))
    left = await v.w.rt.redis.exists(*[keys.settlement_lock(sid) for sid in v.sessions])
    s.holds("the paused workers' locks expired while they were held", left == 0)

    t_fresh = time.monotonic()
    await settle_until_covered(v, s)
    print(
        f"timing: paused by {last_stop - t0:.1f} s, "
        f"fresh workers {time.monotonic() - t_fresh:.1f} s"
    )
    filled = await v.fill_everything()
    print(f"{filled} take-profits filled while the paused workers were held")
    held = time.monotonic() - last_stop
    s.holds(
        f"the paused workers were held past every TTL (lock {LOCK_TTL} s, attempt "
        f"{ATTEMPT_TTL} s, deadline {DEADLINE} s + skew {SKEW} s)",
        held > PAST_EVERY_TTL,
    )
    for p in stopped:
        # A worker that exited just as it was stopped (its exit not yet reaped when the test
        # looked) has nothing to resume; its output is checked like the others'.
        with contextlib.suppress(ProcessLookupError):
            p.proc.send_signal(signal.SIGCONT)
    runs = await asyncio.gather(*(p.output for p in paused))
    a = await audit(v.w, v.sessions, await v.sells())
    refusals = duplicate_refusals(runs)
    if v.kraken is not None:
        refusals += [f"server: {c}" for c in v.kraken.duplicate_refusals]
        print(f"the Kraken server refused {v.kraken.stats.deadline_refusals} late orders")
    print(
        f"resumed: rc {[r.rc for r in runs]}, {len(a.orders)} sells on the venue, "
        f"{len(a.duplicate_client_ids)} client ids accepted twice, {len(refusals)} refused "
        f"as duplicates, {len(a.doubled)} doubled, {len(a.oversold)} oversold"
    )
    check_single_sends(s, a, refusals)
    a.always(s)

    t_final = time.monotonic()
    final = await settle_fresh(v, s)
    print(f"timing: resumed by {t_final - t0:.1f} s, final run {time.monotonic() - t_final:.1f} s")
    s.holds("a final clean run settles every session ok", all(r["state"] == "ok" for r in final))
    end = await audit(v.w, v.sessions, await v.sells())
    check_single_sends(s, end, refusals)
    end.settled(s)
    assert len(end.positions) == len(AGES) * sum(len(ps) for ps in v.sessions.values())


async def test_paused_paper_workers_never_send_a_client_id_twice(
    redis_url: str, admin_database_url: str, scenario: MakeScenario
) -> None:
    s = scenario(8, "Paused workers: paper venue")
    async with private_world(redis_url, admin_database_url) as w:
        v = Venue("paper", w)
        t = time.monotonic()
        await seed(v, PAPER_LAYOUT)
        print(f"timing: seeded in {time.monotonic() - t:.1f} s")
        await pause_scenario(v, s, PAPER_MOMENTS)


async def test_paused_kraken_workers_never_send_a_client_id_twice(
    redis_url: str, admin_database_url: str, scenario: MakeScenario, kraken: CountingKraken
) -> None:
    s = scenario(8, "Paused workers: Kraken test server (open-only client ids)")
    async with private_world(redis_url, admin_database_url) as w:
        v = Venue("kraken", w, kraken)
        await seed(v, KRAKEN_LAYOUT)
        await pause_scenario(v, s, KRAKEN_MOMENTS)


# -- scenario 9: the session lock taken away mid-run -----------------------------------------

LOCK_PAIR = "ETH/USD"
LOCK_AGES = [timedelta(minutes=m) for m in range(70, 250, 4)]  # 45: three batches of 15


async def test_a_worker_whose_lock_is_taken_away_mid_run_places_nothing_more(
    redis_url: str, admin_database_url: str, scenario: MakeScenario
) -> None:
    s = scenario(9, "Lock lost mid-run")
    async with private_world(redis_url, admin_database_url) as w:
        v = Venue("paper", w)
        sid = await w.start_session([LOCK_PAIR])
        v.sessions[sid] = [LOCK_PAIR]
        for age in LOCK_AGES:
            await buy(w, sid, LOCK_PAIR, age)
        ids = await client_ids(v, sid)
        env = v.env(MMOPS_PAPER_FAULTS=json.dumps({"latency_ms": 700}))
        proc = await spawn(env, "settle", "--json", "--session", sid)
        output = asyncio.create_task(finish(proc))

        async def first_batch_recorded() -> bool:
            mine = [o.order_id for o in await v.sells() if o.client_order_id in ids]
            if not mine:
                return False
            async with w.rt.redis.pipeline(transaction=False) as pipe:
                for oid in mine:
                    pipe.exists(keys.tp_order(sid, oid))
                return all(await pipe.execute())

        assert await poll(proc, first_batch_recorded, WAIT_FOR_MOMENT), "no batch recorded"
        proc.send_signal(signal.SIGSTOP)
        before = len([o for o in await v.sells() if o.client_order_id in ids])
        lock = keys.settlement_lock(sid)
        await w.rt.redis.set(lock, "another-worker", px=30_000)  # taken by someone else
        proc.send_signal(signal.SIGCONT)
        run = await output
        s.ran()
        sent = len([o for o in await v.sells() if o.client_order_id in ids])
        sent += len(duplicate_refusals([run]))
        lost = [e for e in events(run) if e["event"] == "settlement.lock_lost"]
        [result] = run.json()["sessions"]
        print(
            f"{before} orders at the venue when the lock was taken, {sent} after; "
            f"session {result['state']}, totals {result['totals']}, lock_lost events {len(lost)}"
        )
        s.holds(
            "after its lock was taken away, the worker sent at most the batch already in "
            "flight (15) and nothing after it",
            sent - before <= 15 and sent < len(LOCK_AGES),
        )
        s.holds(
            "the worker says so: a settlement.lock_lost event for the session",
            any(e.get("session") == sid for e in lost),
        )
        s.holds("the session's result is not ok", result["state"] != "ok")
        s.holds(
            "the worker did not release the lock it no longer owns",
            await w.rt.redis.get(lock) == "another-worker",
        )

        await w.rt.redis.delete(lock)  # the other worker is done
        [final] = await settle_fresh(v, s)
        s.holds("a clean run afterwards settles the session ok", final["state"] == "ok")
        a = await audit(w, v.sessions, await v.sells())
        check_single_sends(s, a, duplicate_refusals([run]))
        a.settled(s)


async def test_paused_workers_on_a_redis_cluster_never_send_a_client_id_twice(
    redis_cluster_url: str, admin_database_url: str, scenario: MakeScenario
) -> None:
    """The paper venue's pauses, every key on a 3-master Redis Cluster."""
    s = scenario(8, "Paused workers: paper venue")
    async with private_world(redis_cluster_url, admin_database_url) as w:
        v = Venue("paper", w)
        await seed(v, PAPER_LAYOUT)
        await pause_scenario(v, s, PAPER_MOMENTS)
