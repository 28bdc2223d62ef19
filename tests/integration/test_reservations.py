"""One account, many workers: two settlement workers on one paper venue never spend the same
free balance (real Redis ledger, real PostgreSQL, the paper venue)."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest

from mmops.adapters.redis import keys
from mmops.services.settlement import SessionResult
from tests.integration.world import World, world

pytestmark = pytest.mark.integration

PAIR = "BTC/USD"
QTY = Decimal("0.01")  # per position
FREE = Decimal("0.04")  # of the 0.06 the two sessions want


def placed(results: list[SessionResult]) -> Decimal:
    return sum(
        (p.amount for r in results for rep in r.pairs.values() for p in rep.placed), Decimal(0)
    )


def failures(results: list[SessionResult]) -> list[str]:
    return [f.kind for r in results for rep in r.pairs.values() for f in rep.failed]


async def settle_two_sessions_at_once(w: World) -> list[SessionResult]:
    """Two workers, each with its own service and venue handle (50 ms a call, so both read
    the balance before either places), settle one session each on the one account."""
    sids = [await w.start_session([PAIR]) for _ in range(2)]
    for sid in sids:
        await w.seed_positions(sid, PAIR, [30, 20, 10], fund=False, quantity=QTY)
    await w.exchange.fund("BTC", FREE)
    workers = [w.settlement(w.venue(latency=0.05)) for _ in sids]
    runs = await asyncio.gather(*(s.run(sid) for s, sid in zip(workers, sids, strict=True)))
    return [r for run in runs for r in run]


async def test_two_workers_on_one_account_place_at_most_its_free_balance(
    redis_url: str, database_url: str
) -> None:
    async with world(redis_url, database_url, balance_reservations=True) as w:
        ledger_key = keys.reservations(w.exchange.account)
        try:
            results = await settle_two_sessions_at_once(w)
            assert failures(results) == []  # no insufficient-funds refusal from the venue
            assert placed(results) == FREE
            shorts = [s for r in results for rep in r.pairs.values() for s in rep.skipped]
            assert {s.reason.value for s in shorts} == {"insufficient_balance"}
            assert sum(len(rep.placed) for r in results for rep in r.pairs.values()) == 4
            ledger = await w.rt.redis.hgetall(ledger_key)
            assert ledger and all(str(v).split("|")[3] for v in ledger.values())  # all placed
        finally:
            await w.rt.redis.delete(ledger_key)


async def test_without_reservations_the_same_two_workers_over_allocate(
    redis_url: str, database_url: str
) -> None:
    """The test above can fail: with the ledger off, both workers spend the same balance and
    the venue refuses what the second sends."""
    async with world(redis_url, database_url, balance_reservations=False) as w:
        results = await settle_two_sessions_at_once(w)
        assert "InsufficientFunds" in failures(results)
        assert placed(results) <= FREE  # the venue itself still refuses the excess
