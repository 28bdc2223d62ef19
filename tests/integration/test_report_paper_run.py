"""After a paper run, the tier report (``mmops report``) equals raw SQL over the session's fills,
orders and take-profits, computed here independently; and the cumulative P&L series ends at
the FIFO realized P&L migration recorded."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from mmops.adapters.postgres import analysis
from mmops.bootstrap import Urls, open_paper_venue, open_runtime, reset_paper_venue
from mmops.config import Settings
from mmops.entrypoints.workflow import WorkflowPlan, run_workflow
from tests.conftest import SessionIds
from tests.integration.test_analysis import TP, F, assert_rows_match, expected_tiers

pytestmark = pytest.mark.integration

PAIRS = ("BTC/USD", "ETH/USD", "SOL/USD")

RAW_FILLED = """
SELECT o.symbol, count(*) FROM orders o
JOIN (SELECT order_id, sum(quantity) AS q FROM fills
      WHERE session_id = %(s)s AND side = 'sell' GROUP BY order_id) f USING (order_id)
WHERE o.session_id = %(s)s AND o.kind = 'take_profit' AND f.q >= o.amount
GROUP BY o.symbol
"""


async def test_tier_report_of_a_paper_run_equals_raw_sql(
    redis_url: str, database_url: str, session_ids: SessionIds
) -> None:
    sid = session_ids.new("rep")
    venue = f"v-{uuid.uuid4().hex[:10]}"
    config = Settings(redis_url=redis_url, database_url=database_url,  # type: ignore[arg-type]
                      paper_venue=venue, fill_events_stream=f"events:{venue}")  # fmt: skip
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(microsecond=0)
    plan = WorkflowPlan(pairs=PAIRS, hours=3, seed=5, start=start)
    async with open_runtime(config, Urls(redis_url, database_url)) as rt:
        try:
            result = await run_workflow(rt, plan, sid, venue=sid)
            async with rt.pool.connection() as conn:
                fills = [F(*row) for row in await (await conn.execute(
                    "SELECT symbol, order_id, side, price, quantity, fee, timestamp FROM fills"
                    " WHERE session_id = %s", (sid,))).fetchall()]  # fmt: skip
                tps = [TP(*row) for row in await (await conn.execute(
                    "SELECT symbol, order_id, position, tier, markup, amount, generation,"
                    " created_at, status, price, amends FROM take_profits WHERE session_id = %s",
                    (sid,))).fetchall()]  # fmt: skip
                tp_orders = Counter(row[0] for row in await (await conn.execute(
                    "SELECT symbol FROM orders WHERE session_id = %s AND kind = 'take_profit'",
                    (sid,))).fetchall())  # fmt: skip
                raw_filled = dict(await (await conn.execute(RAW_FILLED, {"s": sid})).fetchall())
                stats = dict(await (await conn.execute(
                    "SELECT symbol, realized_pnl FROM session_pair_stats WHERE session_id = %s",
                    (sid,))).fetchall())  # fmt: skip
                ended = (await (await conn.execute(
                    "SELECT ended_at FROM sessions WHERE id = %s", (sid,))).fetchone())  # fmt: skip
        finally:
            async with open_paper_venue(rt, rt.clock, venue=sid) as v:
                await reset_paper_venue(rt, v)
        rows = await analysis.tier_report(rt.pool, sid)
        series = await analysis.pnl_series(rt.pool, sid)
    assert result.migrations and result.migrations[-1].state == "verified"
    # The workflow's migration copied every take-profit with its final state.
    assert len(tps) == sum(tp_orders.values()) > 0
    # Placed and filled per pair: raw SQL over orders and fills.
    placed = Counter[str]()
    filled = Counter[str]()
    for r in rows:
        placed[r["symbol"]] += r["placed"]
        filled[r["symbol"]] += r["filled"]
    assert placed == tp_orders
    assert {k: v for k, v in filled.items() if v} == raw_filled and sum(raw_filled.values()) > 0
    # Every figure of every (pair, tier): the definitions applied to the raw rows.
    assert ended is not None and ended[0] is not None
    want = expected_tiers(fills, tps, ended[0])
    assert {(r["symbol"], r["tier"]) for r in rows} == set(want)
    for r in rows:
        assert_rows_match(r, want[(r["symbol"], r["tier"])])
    # The P&L series ends at migration's FIFO realized P&L, pair by pair.
    last = {p["symbol"]: p["cumulative_pnl"] for p in series}
    assert last == {k: v for k, v in stats.items() if k in last}
    assert all(isinstance(v, Decimal) for v in last.values())
