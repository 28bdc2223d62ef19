"""One seed, one paper run: two runs of the paper workflow with the same seed and session id
record the same fills, place the same take-profits and leave the venue with the same orders
and trades, ids included (what ``bench/workflow.py`` and ``mmops demo`` promise)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from mmops.adapters.paper.catalog import SYMBOLS
from mmops.adapters.paper.state import PaperOrder
from mmops.bootstrap import Runtime, Urls, open_paper_venue, open_runtime, reset_paper_venue
from mmops.config import Settings
from mmops.entrypoints.workflow import WorkflowPlan, run_workflow
from tests.conftest import SessionIds

pytestmark = pytest.mark.integration

START = datetime(2026, 1, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Outcome:
    fills: int
    take_profits: int
    trades: list[tuple[str, ...]]
    orders: list[tuple[str, ...]]


async def _run(rt: Runtime, plan: WorkflowPlan, sid: str) -> Outcome:
    """One run from a clean slate (the session's records deleted, the venue reset)."""
    await rt.session_records.delete(sid)
    await rt.sessions.delete_all(sid)
    result = await run_workflow(rt, plan, sid, venue=sid)
    async with open_paper_venue(rt, rt.clock, venue=sid) as venue:
        trades, _ = await venue.trades(0)
        raws = await rt.redis.hgetall(venue.keys.orders)
        await reset_paper_venue(rt, venue)
    orders = [PaperOrder.decode(raw).order for raw in raws.values()]
    return Outcome(
        fills=result.loop.fills,
        take_profits=sum(result.settle_positions) + result.triggered_placed,
        trades=[
            (t.id, t.order_id, str(t.client_order_id), t.timestamp.isoformat(), str(t.amount))
            for t in trades
        ],
        orders=sorted(
            (o.id, str(o.client_order_id), o.status.value, str(o.price), str(o.filled))
            for o in orders
        ),
    )


@pytest.mark.parametrize("settle_on_fill", [False, True], ids=["scheduled", "on-fill"])
async def test_one_seed_gives_the_same_run_twice(
    redis_url: str, database_url: str, session_ids: SessionIds, settle_on_fill: bool
) -> None:
    sid = session_ids.new("det")
    config = Settings(redis_url=redis_url, database_url=database_url,  # type: ignore[arg-type]
                      fill_events_stream=f"events:{uuid.uuid4().hex[:10]}")  # fmt: skip
    plan = WorkflowPlan(SYMBOLS[:10], 1.5, 7, START, settle_on_fill=settle_on_fill, migrate=False)
    async with open_runtime(config, Urls(redis_url, database_url)) as rt:
        first = await _run(rt, plan, sid)
        second = await _run(rt, plan, sid)
    assert first.fills > 50 and first.take_profits > 20, first  # a run that trades
    assert (second.fills, second.take_profits) == (first.fills, first.take_profits)
    assert second.orders == first.orders
    assert second.trades == first.trades
