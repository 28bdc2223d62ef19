"""``mmops reconcile`` as an OS process: each case the exchange can differ in is reported with
the action taken, in a stable order; an unknown session is a configuration error."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import pytest

from mmops.adapters.clock import SimulatedClock
from mmops.domain.exchange import OrderRequest
from mmops.domain.models import OrderStatus, Side
from tests.integration.world import World, world

pytestmark = pytest.mark.e2e

FILLED, CANCELLED, OPEN, ABSENT, MANUAL = "BTC/USD", "ETH/USD", "SOL/USD", "LTC/USD", "XRP/USD"


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


async def mmops(w: World, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    env.update(
        MMOPS_REDIS_URL=w.rt.urls.redis,
        MMOPS_DATABASE_URL=w.rt.urls.database,
        MMOPS_PAPER_VENUE=w.exchange.venue,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mmops.entrypoints", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def a_session_the_exchange_disagrees_with(w: World) -> tuple[str, dict[str, str]]:
    """One take-profit per pair, then on the venue: one filled, one cancelled, one left
    open, one gone from the venue's books, and a sell placed by a person. Returns the
    session and, per pair, the order id that matters."""
    pairs = (FILLED, CANCELLED, OPEN, ABSENT)
    sid = await w.start_session([*pairs, MANUAL])
    for pair in pairs:
        await w.seed_positions(sid, pair, [5])
    [result] = await w.settlement().run(sid)
    ids = {pair: result.pairs[pair].placed[0].order_id for pair in pairs}
    clock = SimulatedClock(w.rt.clock.now())
    venue = w.venue(clock=clock)
    await venue.match()
    await venue.shock(FILLED, Decimal(2))
    clock.advance(timedelta(seconds=120))
    await venue.match()
    await venue.shock(FILLED, Decimal(1))
    assert (await w.exchange.fetch_order(FILLED, ids[FILLED])).status is OrderStatus.FILLED
    await w.exchange.cancel(CANCELLED, ids[CANCELLED])
    await w.rt.redis.hdel(w.exchange.keys.orders, ids[ABSENT])
    await w.rt.redis.srem(w.exchange.keys.open, ids[ABSENT])
    ticker = (await w.exchange.tickers([MANUAL]))[MANUAL]
    await w.exchange.fund("XRP", Decimal(100))
    request = OrderRequest(MANUAL, Side.SELL, Decimal(50), ticker.ask * 2, str(uuid.uuid4()))
    [manual] = await w.exchange.place_batch([request])
    assert manual.order is not None
    ids[MANUAL] = manual.order.id
    return sid, ids


async def test_reconcile_json_reports_every_case_with_the_action_taken(w: World) -> None:
    sid, ids = await a_session_the_exchange_disagrees_with(w)

    rc, out, err = await mmops(w, "reconcile", "--session", sid, "--json")

    assert rc == 0, err
    report = json.loads(out)
    actions = {row["pair"]: (row["order_id"], row["action"]) for row in report["rows"]}
    assert actions == {
        FILLED: (ids[FILLED], "recorded_fill"),
        CANCELLED: (ids[CANCELLED], "released"),
        OPEN: (ids[OPEN], "none"),
        ABSENT: (ids[ABSENT], "absent"),
        MANUAL: (ids[MANUAL], "reported_unknown"),
    }
    keys = [(r["session"], r["pair"], r["order_id"]) for r in report["rows"]]
    assert keys == sorted(keys)
    assert report["sessions"] == [sid] and report["dry_run"] is False
    # Done once: a second look finds only what is still believed open, and the unknown sell.
    rc, out, _ = await mmops(w, "reconcile", "--session", sid, "--json")
    again = {row["pair"]: row["action"] for row in json.loads(out)["rows"]}
    assert again == {OPEN: "none", ABSENT: "absent", MANUAL: "reported_unknown"}


async def test_reconcile_dry_run_reports_and_changes_nothing_and_the_table_names_actions(
    w: World,
) -> None:
    sid, ids = await a_session_the_exchange_disagrees_with(w)

    rc, out, err = await mmops(w, "reconcile", "--session", sid, "--dry-run")
    assert rc == 0, err
    assert "released" in out and "recorded_fill" in out and "dry run" in out

    record = await w.rt.positions.tp_order(sid, ids[CANCELLED])
    assert record is not None and record.status.value == "open"


async def test_an_unknown_session_is_a_configuration_error(w: World) -> None:
    rc, _, err = await mmops(w, "reconcile", "--session", "no-such-session")
    assert rc == 2
    assert "no-such-session" in err
