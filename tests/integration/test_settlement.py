"""Settlement on real Redis, real PostgreSQL and the paper venue."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.bootstrap import build_settlement
from mmops.domain.models import OrderKind, Side
from mmops.domain.pricing import age_in_minutes
from mmops.domain.tiers import DEFAULT_TIERS
from mmops.services.tp_results import SkipReason
from tests.integration.world import PAIRS, World, duplicates, world

pytestmark = pytest.mark.integration


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


async def test_every_coverable_position_gets_one_take_profit_at_its_tier_price(w: World) -> None:
    pairs = PAIRS[:6]
    sid = await w.start_session(pairs)
    ages = [5, 59, 60, 300, 800, 2000]
    for pair in pairs:
        await w.seed_positions(sid, pair, ages)
    [result] = await w.settlement().run(sid)
    assert result.state == "ok", result.errors()
    assert result.totals()["placed"] == 36
    now = w.rt.clock.now()
    for pair in pairs:
        report = result.pairs[pair]
        tiers = {p.position_id: p.tier_minutes for p in report.placed}
        for position in await w.positions(sid, pair):
            assert position.uncovered == 0 and position.covered == position.filled
            expected_tier, _ = DEFAULT_TIERS.markup_at(age_in_minutes(position.opened_at, now))
            assert tiers[position.position_id] == expected_tier
        orders = await w.take_profit_orders(sid, pair)
        assert sorted(p for p, _, _ in orders) == sorted(tiers)
        assert duplicates(orders) == []
    placed = result.pairs["BTC/USD"].placed
    assert {p.tier_minutes for p in placed} == {0, 60, 240, 720, 1440}
    for p in placed:  # each take-profit is recorded as an order, so its fills belong somewhere
        order = await w.rt.orders.get(sid, "BTC/USD", p.order_id)
        assert order is not None and order.kind is OrderKind.TAKE_PROFIT
        assert (order.side, order.price, order.amount) == (Side.SELL, p.price, p.amount)
    status = await w.rt.redis.hgetall(f"settlement:status:{{{sid}}}")
    assert status["state"] == "ok" and status["placed"] == "36"
    assert await w.rt.redis.get(f"settlement:last_run:{{{sid}}}")
    async with w.rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT state, placed FROM settlement_runs WHERE session_id = %s", (sid,)
        )
        assert await cur.fetchall() == [("ok", 36)]


async def test_a_second_run_places_nothing_more(w: World) -> None:
    sid = await w.start_session(PAIRS[:2])
    for pair in PAIRS[:2]:
        await w.seed_positions(sid, pair, [10, 20, 30])
    first, second = await w.settlement().run(sid), await w.settlement().run(sid)
    assert first[0].totals()["placed"] == 6
    assert second[0].totals().get("placed", 0) == 0
    assert second[0].state == "ok"


async def test_dust_and_insufficient_balance_are_reported_not_placed(w: World) -> None:
    sid = await w.start_session(["BTC/USD", "BTC/EUR", "ETH/USD"])
    # Two pairs share BTC, funded for only the oldest of their four positions.
    btc_usd = await w.seed_positions(sid, "BTC/USD", [500, 100], notional=Decimal(60), fund=False)
    btc_eur = await w.seed_positions(sid, "BTC/EUR", [400, 50], notional=Decimal(60), fund=False)
    qty = (await w.positions(sid, "BTC/USD"))[0].filled
    await w.exchange.fund("BTC", qty)
    # An ETH position below the minimum order size: dust.
    dust = await w.seed_positions(sid, "ETH/USD", [30], quantity=Decimal("0.001"))
    [result] = await w.settlement().run(sid)
    placed = {p.position_id for r in result.pairs.values() for p in r.placed}
    skipped = {s.position_id: s.reason for r in result.pairs.values() for s in r.skipped}
    assert placed == {btc_usd[0]}
    assert skipped[btc_eur[0]] is SkipReason.INSUFFICIENT_BALANCE
    assert skipped[btc_eur[1]] is SkipReason.INSUFFICIENT_BALANCE
    assert skipped[btc_usd[1]] is SkipReason.INSUFFICIENT_BALANCE
    assert skipped[dust[0]] is SkipReason.DUST
    assert result.state == "partial"  # positions left uncovered for want of balance


async def test_two_runs_at_the_same_moment_place_no_duplicates(w: World) -> None:
    sid = await w.start_session(PAIRS[:5])
    for pair in PAIRS[:5]:
        await w.seed_positions(sid, pair, list(range(1, 121, 6)))
    a, b = w.settlement(w.venue()), w.settlement(w.venue())
    results = await asyncio.gather(a.run(sid), b.run(sid), a.run(sid), b.run(sid))
    states = Counter(r[0].state for r in results)
    assert states["ok"] >= 1 and set(states) <= {"ok", "locked"}
    for pair in PAIRS[:5]:
        orders = await w.take_profit_orders(sid, pair)
        assert duplicates(orders) == []
        per_position = Counter(p for p, _, _ in orders)
        assert set(per_position.values()) == {1}
        positions = await w.positions(sid, pair)
        assert len(per_position) == len(positions) == 20
        assert all(p.uncovered == 0 for p in positions)
    assert await w.rt.redis.get(f"lock:settlement:{{{sid}}}") is None


async def test_a_timeout_after_accept_is_recovered_by_lookup_not_placed_twice(w: World) -> None:
    sid = await w.start_session(["ETH/USD"])
    await w.seed_positions(sid, "ETH/USD", [10, 20, 30])
    flaky = w.venue(timeout_after_accept=frozenset({1}))
    [first] = await w.settlement(flaky).run(sid)
    # The batch landed, its answer was lost; the lookup by client id found every order.
    assert first.totals()["placed"] == 3 and first.totals()["failed"] == 0
    [second] = await w.settlement().run(sid)
    assert second.totals().get("placed", 0) == 0
    orders = await w.take_profit_orders(sid, "ETH/USD")
    assert len(orders) == 3 and duplicates(orders) == []


async def test_a_lost_answer_with_a_failed_lookup_is_kept_pending_and_resolved_next_run(
    w: World,
) -> None:
    sid = await w.start_session(["SOL/USD"])
    await w.seed_positions(sid, "SOL/USD", [10, 20])
    # Call 5 is place_batch (markets, tickers, balances and open orders come first), calls 6
    # and 7 the lookups.
    flaky = w.venue(timeout_after_accept=frozenset({1}), fail_calls=frozenset({6, 7}))
    [first] = await w.settlement(flaky).run(sid)
    assert first.totals()["failed"] == 2 and first.state == "partial"
    assert all(p.pending for p in await w.positions(sid, "SOL/USD"))
    # Until their deadline (plus clock skew) the orders may still be in flight: left alone.
    [second] = await w.settlement().run(sid)
    assert second.totals()["skipped_in_flight"] == 2 and second.totals().get("placed", 0) == 0
    later = SimulatedClock(w.rt.clock.now() + timedelta(seconds=20))  # deadline 15 s + skew 2 s
    [third] = await w.settlement(clock=later).run(sid)
    assert third.totals()["recovered"] == 2 and third.totals().get("placed", 0) == 0
    orders = await w.take_profit_orders(sid, "SOL/USD")
    assert len(orders) == 2 and duplicates(orders) == []
    assert all(p.uncovered == 0 and not p.pending for p in await w.positions(sid, "SOL/USD"))


async def test_one_pair_failing_leaves_the_others_covered_and_is_reported(w: World) -> None:
    pairs = PAIRS[:4]
    sid = await w.start_session(pairs)
    for pair in pairs:
        await w.seed_positions(sid, pair, [15, 25])
    broken = w.venue(fail_symbols=frozenset({"ETH/USD"}))
    [result] = await w.settlement(broken).run(sid)
    assert result.state == "partial"
    assert result.pairs["ETH/USD"].failed and not result.pairs["ETH/USD"].placed
    for pair in set(pairs) - {"ETH/USD"}:
        assert len(result.pairs[pair].placed) == 2
    status = await w.rt.redis.hgetall(f"settlement:status:{{{sid}}}")
    assert status["state"] == "partial"
    assert any("ETH/USD" in e for e in json.loads(status["errors"]))


async def test_dry_run_places_nothing(w: World) -> None:
    sid = await w.start_session(["BTC/USD"])
    await w.seed_positions(sid, "BTC/USD", [10, 20])
    [result] = await w.settlement(dry_run=True).run(sid)
    assert all(p.dry_run for p in result.pairs["BTC/USD"].placed)
    assert len(result.pairs["BTC/USD"].placed) == 2
    assert await w.exchange.open_orders("BTC/USD") == []
    assert all(p.uncovered > 0 for p in await w.positions(sid, "BTC/USD"))


async def test_balance_freed_by_repricing_is_available_in_the_same_run(w: World) -> None:
    """A stale take-profit is cancelled and replaced (on a venue that cannot amend it in
    place), and a new position is covered too, when the balance holds exactly both: the run's
    balance snapshot predates the cancel."""
    clock = SimulatedClock(w.rt.clock.now())
    venue = w.venue(clock=clock)  # the venue lives on the same clock: deadlines are checked
    venue.amends = False
    sid = await w.start_session(["ETH/USD"])
    [old] = await w.seed_positions(sid, "ETH/USD", [5])
    [first] = await build_settlement(w.rt, venue, dry_run=False, clock=clock).run(sid)
    assert [p.tier_minutes for p in first.pairs["ETH/USD"].placed] == [0]
    clock.advance(timedelta(minutes=70))
    [new] = await w.seed_positions(sid, "ETH/USD", [1])  # funded with exactly its quantity
    [second] = await build_settlement(w.rt, venue, dry_run=False, clock=clock).run(sid)
    report = second.pairs["ETH/USD"]
    assert report.repriced == 1
    assert sorted(p.position_id for p in report.placed) == sorted([old, new])
    assert {p.tier_minutes for p in report.placed} == {60}
    assert second.state == "ok"


async def test_a_full_run_reads_each_pair_once_for_reconciling_and_covering(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    pairs = PAIRS[:3]
    sid = await w.start_session(pairs)
    for pair in pairs:
        await w.seed_positions(sid, pair, [5, 90, 300])
    reads: Counter[str] = Counter()
    read_all = w.rt.positions.all

    async def counted(session_id: str, symbol: str) -> object:
        reads[symbol] += 1
        return await read_all(session_id, symbol)

    monkeypatch.setattr(w.rt.positions, "all", counted)
    [result] = await w.settlement().run(sid)
    assert result.state == "ok", result.errors()
    assert result.totals()["placed"] == 9
    assert reads == {pair: 1 for pair in pairs}
