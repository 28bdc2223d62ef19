"""Portfolio stop-loss on the paper venue: each threshold acts once; dry-run only alerts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from mmops.domain.models import OrderStatus, SessionStatus
from mmops.domain.ratelimit import TradingCounter
from mmops.ports import Exchange
from tests.integration.world import World, world

pytestmark = pytest.mark.integration


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


async def settle_after_shock(
    w: World, sid: str, multiplier: str, dry_run: bool = False, venue: Exchange | None = None
) -> object:
    await w.exchange.shock("BTC/USD", Decimal(multiplier))
    [result] = await w.settlement(venue, dry_run=dry_run).run(sid)
    assert result.stoploss is not None
    return result.stoploss


async def test_a_falling_price_warns_then_halts_then_flattens_each_once(w: World) -> None:
    sid = await w.start_session(["BTC/USD"], capital=Decimal(1000))
    await w.seed_positions(sid, "BTC/USD", [10] * 10, notional=Decimal(50))
    [first] = await w.settlement().run(sid)
    assert first.totals()["placed"] == 10
    assert first.stoploss is not None and first.stoploss.action is None

    warn = await settle_after_shock(w, sid, "0.88")
    assert (warn.level.value, warn.action) == ("warn", "warn")  # type: ignore[attr-defined]
    again = await settle_after_shock(w, sid, "0.88")
    assert again.action is None and again.level.value == "warn"  # type: ignore[attr-defined]
    live = await w.rt.sessions.get(sid)
    assert live is not None and live.status is SessionStatus.ACTIVE

    halt = await settle_after_shock(w, sid, "0.78")
    assert halt.action == "halt"  # type: ignore[attr-defined]
    live, row = await w.rt.sessions.get(sid), await w.rt.session_records.get(sid)
    assert live is not None and row is not None
    assert live.status is row.status is SessionStatus.HALTED
    assert await w.exchange.open_orders("BTC/USD")  # take-profits still rest

    # Cancelling ten young orders costs +80 on Kraken's counter (Starter: 60): the flatten is
    # cut short by the rate limit, and the next run finishes it without a second alert.
    flatten = await settle_after_shock(w, sid, "0.55")
    assert flatten.action == "flatten"  # type: ignore[attr-defined]
    roomy = w.venue(counter=TradingCounter(threshold=1000, decay=1))
    finish = await settle_after_shock(w, sid, "0.55", venue=roomy)
    assert finish.action is None and finish.level.value == "flatten"  # type: ignore[attr-defined]
    open_sells = [o for o in await w.exchange.open_orders("BTC/USD") if o.price > 0]
    tp_ids = {oid for p in await w.positions(sid, "BTC/USD") for oid, _ in p.take_profits}
    for oid in tp_ids:
        assert (await w.exchange.fetch_order("BTC/USD", oid)).status is OrderStatus.CANCELED
    for p in await w.positions(sid, "BTC/USD"):
        assert p.closed == p.filled  # an exit order sells what it held
    assert len(open_sells) == 10  # the exits, resting at the bid
    last = await settle_after_shock(w, sid, "0.50", venue=roomy)
    assert last.action is None  # nothing is done twice
    assert len([o for o in await w.exchange.open_orders("BTC/USD")]) == 10  # no new TPs


async def test_in_dry_run_the_stop_loss_only_alerts(w: World) -> None:
    sid = await w.start_session(["BTC/USD"], capital=Decimal(1000))
    await w.seed_positions(sid, "BTC/USD", [10] * 10, notional=Decimal(50))
    await w.settlement().run(sid)
    report = await settle_after_shock(w, sid, "0.5", dry_run=True)
    assert report.action == "flatten"  # type: ignore[attr-defined]
    live = await w.rt.sessions.get(sid)
    assert live is not None and live.status is SessionStatus.ACTIVE
    orders = await w.exchange.open_orders("BTC/USD")
    assert len(orders) == 10 and all(o.status is OrderStatus.OPEN for o in orders)
    assert all(p.closed == 0 for p in await w.positions(sid, "BTC/USD"))
