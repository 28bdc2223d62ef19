"""Scenario 5, exchange faults, on the paper venue and on the ccxt adapter against the local
Kraken server: answers lost after the venue accepted a batch, 5xx and unavailable calls,
rate-limit refusals, post-only and funds refusals, all in the middle of a batch of 40
take-profits (three batches: 15, 15, 10). Nothing is ever placed twice (per position and
generation at most one live order; the orders on the venue are the take-profits recorded,
or named by a pending marker while their fate is unknown), and once the fault clears the
next run places what was not placed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.paper.catalog import BY_SYMBOL
from mmops.adapters.paper.exchange import PaperExchange
from mmops.bootstrap import build_settlement
from mmops.domain.exchange import MAX_BATCH, OrderRequest, PlacementResult
from mmops.domain.ratelimit import TradingCounter
from mmops.ports import Exchange
from mmops.services.settlement import SessionResult
from tests.integration.world import World, world
from tests.kraken_server import KrakenServer, make_ccxt_exchange
from tests.reliability.harness import (
    Audit,
    MakeScenario,
    VenueOrder,
    audit,
    check,
    paper_sells,
)
from tests.reliability.ledger import Scenario

PAIR = "ETH/USD"
AGES = list(range(70, 230, 4))  # 40 positions, all at the 60-minute tier for the whole test
AFTER_THE_DEADLINES = timedelta(seconds=20)  # past the default deadline (15 s) + skew (2 s)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A run's counts: placed, failed, recovered; and how many orders the venue holds whose
    fate the run could not learn (recorded later through their pending markers)."""

    placed: int
    failed: int
    recovered: int = 0
    pending: int = 0


@dataclass(frozen=True, slots=True)
class Case:
    id: str
    first: Outcome  # the run during the fault
    then: Outcome  # the next run, the fault cleared
    faults: Mapping[str, Any] = field(default_factory=dict)
    counter: TradingCounter | None = None


def counts(result: SessionResult) -> Outcome:
    t = result.totals()
    return Outcome(t.get("placed", 0), t.get("failed", 0), t.get("recovered", 0))


async def run_and_audit(
    s: Scenario,
    w: World,
    sid: str,
    exchange: Exchange,
    sells: Callable[[], Awaitable[list[VenueOrder]]] | None = None,
    *,
    later: bool = False,
) -> tuple[Outcome, Audit]:
    """One settlement run of ``sid`` on ``exchange``, then the venue's sells audited.

    ``later``: the run comes after every earlier order's deadline (plus the clock skew) has
    passed, as the next scheduled run does, so what the faulty run left unanswered is looked
    up rather than waited for as possibly in flight."""
    clock = SimulatedClock(w.rt.clock.now() + AFTER_THE_DEADLINES) if later else None
    [result] = await build_settlement(w.rt, exchange, dry_run=False, clock=clock).run(sid)
    s.ran()
    a = await audit(w, {sid: [PAIR]}, await (sells or (lambda: paper_sells(w)))())
    a.always(s)
    return counts(result), a


def check_first(s: Scenario, case: Case, outcome: Outcome, a: Audit) -> None:
    """The faulty run: exactly what the fault hit failed, and every live order on the venue
    is recorded, or (lost answer, failed lookup) named by its position's pending marker."""
    got = Outcome(outcome.placed, outcome.failed, outcome.recovered, len(a.unrecorded))
    if got != case.first:
        print(f"{case.id}: the faulty run gave {got}, expected {case.first}")
    s.holds(
        "a fault in the middle of a batch fails only what it hit (the rest is placed), and "
        "only orders whose answer was lost await a lookup",
        got == case.first,
    )
    check(
        s,
        "orders on the venue = take-profits recorded (each recorded one is live)",
        a.stale,
    )


def check_then(s: Scenario, case: Case, outcome: Outcome, a: Audit) -> None:
    if outcome != case.then:
        print(f"{case.id}: the next run gave {outcome}, expected {case.then}")
    s.holds(
        "once the fault clears, the next run places (or recovers) exactly what was missing",
        outcome == case.then,
    )
    a.settled(s)
    s.holds("every position ends with one live take-profit", a.live == len(AGES))


# -- the paper venue -----------------------------------------------------------------------

PAPER_CASES = [
    Case(
        "answer-lost-after-accept",
        Outcome(40, 0),
        Outcome(0, 0),
        {"timeout_after_accept": frozenset({2})},
    ),
    # Calls 1-4 are markets, tickers, balances and open orders; 5 is the first batch, 6 the
    # second.
    Case("unavailable-call", Outcome(25, 15), Outcome(15, 0), {"fail_calls": frozenset({6})}),
    Case(
        "answer-lost-and-lookups-fail",
        Outcome(25, 15, 0, 15),
        Outcome(0, 0, 15),
        {"timeout_after_accept": frozenset({2}), "fail_calls": frozenset(range(7, 22))},
    ),
    Case(
        "refusals-mid-batch",
        Outcome(34, 6),
        Outcome(6, 0),
        {
            "reject_orders": {
                18: "post_only",
                19: "insufficient_funds",
                20: "rate_limited",
                21: "minimum",
                22: "rejected",
                23: "unavailable",
            }
        },
    ),
    Case(
        "rate-limit-counter",
        Outcome(15, 25),
        Outcome(25, 0),
        counter=TradingCounter(threshold=20, decay=20),
    ),
]


@pytest.mark.parametrize("case", PAPER_CASES, ids=[c.id for c in PAPER_CASES])
async def test_paper_faults_mid_batch_place_nothing_twice_and_the_next_run_places_the_rest(
    redis_url: str, database_url: str, scenario: MakeScenario, case: Case
) -> None:
    s = scenario(5, "Exchange faults")
    async with world(redis_url, database_url) as w:
        sid = await w.start_session([PAIR])
        await w.seed_positions(sid, PAIR, AGES)
        faulty = w.venue(counter=case.counter, **case.faults)
        outcome, a = await run_and_audit(s, w, sid, faulty)
        check_first(s, case, outcome, a)
        outcome, a = await run_and_audit(s, w, sid, w.exchange, later=True)
        check_then(s, case, outcome, a)


class Draining(PaperExchange):
    """A venue whose free balance is taken (another order, a withdrawal) just before the
    second batch arrives, leaving room for five more take-profits: the rest are refused."""

    taken = Decimal(0)
    _batches = 0

    async def place_batch(self, orders: Sequence[OrderRequest]) -> list[PlacementResult]:
        self._batches += 1
        if self._batches == 2:
            base = BY_SYMBOL[orders[0].symbol].market.base
            free = (await self.balances())[base].free
            self.taken = free - 5 * orders[0].amount
            await self.fund(base, -self.taken)
        return await super().place_batch(orders)


async def test_paper_funds_taken_mid_batch_are_refused_once_and_placed_after_a_refund(
    redis_url: str, database_url: str, scenario: MakeScenario
) -> None:
    s = scenario(5, "Exchange faults")
    async with world(redis_url, database_url) as w:
        sid = await w.start_session([PAIR])
        await w.seed_positions(sid, PAIR, AGES)
        draining = Draining(w.rt.redis, w.rt.clock, venue=w.exchange.venue, seed=7)
        case = Case("funds-taken-mid-batch", Outcome(20, 20), Outcome(20, 0))
        outcome, a = await run_and_audit(s, w, sid, draining)
        check_first(s, case, outcome, a)
        await w.exchange.fund(BY_SYMBOL[PAIR].market.base, draining.taken)
        outcome, a = await run_and_audit(s, w, sid, w.exchange, later=True)
        check_then(s, case, outcome, a)


# -- ccxt against the local Kraken server --------------------------------------------------

KRAKEN_CASES = [
    # The second AddOrderBatch is processed, its answer held back past the client's timeout.
    Case(
        "answer-lost-after-accept",
        Outcome(40, 0),
        Outcome(0, 0),
        {"timeout_after_accept": {2: 1.0}},
    ),
    # Private calls 1 and 2 are BalanceEx and OpenOrders, 3 the first AddOrderBatch, 4 the
    # second.
    Case("http-500", Outcome(25, 15), Outcome(15, 0), {"fail_private_call": {4: "5xx"}}),
    Case(
        "service-unavailable",
        Outcome(25, 15),
        Outcome(15, 0),
        {"fail_private_call": {4: "unavailable"}},
    ),
    # After the lost answer, each order's lookup (calls 5-19) fails too.
    Case(
        "answer-lost-and-lookups-fail",
        Outcome(25, 15, 0, 15),
        Outcome(0, 0, 15),
        {
            "timeout_after_accept": {2: 1.0},
            "fail_private_call": {n: "unavailable" for n in range(5, 20)},
        },
    ),
    Case(
        "refusals-mid-batch",
        Outcome(35, 5),
        Outcome(5, 0),
        {
            "reject_order": {
                18: "EOrder:Post only order",
                19: "EOrder:Insufficient funds",
                20: "EOrder:Rate limit exceeded",
                21: "EOrder:Order minimum not met",
                22: "EService:Unavailable",
            }
        },
    ),
    # The client's model of Kraken's counter is too generous: the server refuses whole calls.
    Case(
        "rate-limit-counter",
        Outcome(15, 25),
        Outcome(25, 0),
        counter=TradingCounter(threshold=20, decay=50),
    ),
]


async def kraken_sells(server: KrakenServer) -> list[VenueOrder]:
    """Every sell on the Kraken server; canceled ones are not live."""
    return [
        VenueOrder(o["txid"], o["cl_ord_id"] or "", Decimal(o["vol"]), o["status"] != "canceled")
        for o in server.orders()
        if o["descr"]["type"] == "sell"
    ]


def arrange(server: KrakenServer, faults: Mapping[str, Any]) -> None:
    for n, delay in faults.get("timeout_after_accept", {}).items():
        server.timeout_after_accept(n, delay)
    for n, kind in faults.get("fail_private_call", {}).items():
        server.fail_private_call(n, kind)
    for n, error in faults.get("reject_order", {}).items():
        server.reject_order(n, error)


@pytest.fixture
def kraken(request: pytest.FixtureRequest) -> Iterator[KrakenServer]:
    case: Case = request.node.callspec.params["case"]
    with KrakenServer(counter=case.counter) as server:
        yield server
        assert server.stats.errors == []


@pytest.mark.parametrize("case", KRAKEN_CASES, ids=[c.id for c in KRAKEN_CASES])
async def test_kraken_faults_mid_batch_place_nothing_twice_and_the_next_run_places_the_rest(
    redis_url: str, database_url: str, scenario: MakeScenario, case: Case, kraken: KrakenServer
) -> None:
    s = scenario(5, "Exchange faults")
    async with world(redis_url, database_url) as w:
        sid = await w.start_session([PAIR])
        await w.seed_positions(sid, PAIR, AGES, fund=False)
        ticker = (await w.exchange.tickers([PAIR]))[PAIR]
        kraken.set_quote(PAIR, ticker.bid, ticker.ask)  # the take-profits rest above the bid
        bought = sum((p.filled for p in await w.positions(sid, PAIR)), Decimal(0))
        kraken.fund(BY_SYMBOL[PAIR].market.base, bought)
        arrange(kraken, case.faults)
        generous = {"counter": TradingCounter(threshold=1000, decay=50)} if case.counter else {}
        sells = partial(kraken_sells, kraken)
        held = max(case.faults.get("timeout_after_accept", {0: 0.0}).values())
        held_until = time.monotonic() + held + 0.1
        async with make_ccxt_exchange(kraken, timeout=0.5, **generous) as faulty:
            outcome, a = await run_and_audit(s, w, sid, faulty, sells)
        check_first(s, case, outcome, a)
        if case.counter is not None:
            # A new client cannot know the server's counter: let the 15 the faulty run added
            # decay (the server's state is not observable, so this is a computed wait).
            await asyncio.sleep(MAX_BATCH / case.counter.decay)
        async with make_ccxt_exchange(kraken) as clean:
            outcome, a = await run_and_audit(s, w, sid, clean, sells, later=True)
        check_then(s, case, outcome, a)
        # Let the server deliver the answer it held back before it stops (no signal to poll).
        await asyncio.sleep(max(0.0, held_until - time.monotonic()))
