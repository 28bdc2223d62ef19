"""Analysis queries over the warehouse. docs/MONITORING_QUERIES.md shows the same SQL (a test
checks it), so what the demo, ``mmops report`` and the dashboard show is what an operator can run
by hand.

Every function returns rows as dicts with ``Decimal`` money, ratios and seconds, ``datetime``
times and ``None`` where a figure is undefined (no sample); turning them into JSON is the
caller's. Definitions (the SQL is the reference; docs/MONITORING_QUERIES.md explains them):

- a take-profit is **filled** when its own sell fills add up to its amount; **open** when not
  filled and its last recorded state is ``open``; **repriced** when it was amended in place
  (``amends > 0``), is not its position's first attempt (``generation > 0``) or was replaced by
  repricing (``status = 'replaced'``);
- **cost basis** of a position = (buy notional + buy fees) / bought quantity, from its buy fills;
- **captured markup** of a filled take-profit = (sell notional - sell fees) / sold quantity /
  basis - 1: net of the fees on both sides, so it compares with the **planned** markup (the
  tier's markup over break-even, which already pays both fees);
- **realized P&L of a tier** = Σ over its take-profits' fills of (sell notional - sell fees -
  basis * sold quantity): attributed to the position each take-profit sold. The per-pair FIFO
  figure of ``session_pair_stats`` matches sells to the oldest buys instead; both agree on a
  pair whose positions are all closed by their own take-profits;
- **inventory-hours** = Σ basis * quantity * hours held, from the position's first buy fill
  until the take-profit's last fill (quantity sold) or, for an open one, the session's end (now
  while it runs): quote currency * hours;
- **markout** of a buy fill at horizon h = (mid at h - fill price) / fill price * 10 000 (bps;
  positive = the market went up after the buy), the mid being the first price recorded at or
  after fill time + h.
"""

from __future__ import annotations

from typing import Any, LiteralString

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres.pool import pg_errors

PAIR_PNL = """
SELECT st.symbol,
       st.orders,
       st.fills,
       st.buy_volume,
       st.sell_volume,
       st.fees,
       st.realized_pnl,
       st.open_quantity,
       (SELECT count(*) FROM orders o
         WHERE o.session_id = st.session_id AND o.symbol = st.symbol
           AND o.kind = 'take_profit' AND o.status = 'filled') AS take_profits_filled
FROM session_pair_stats st
WHERE st.session_id = %(session_id)s
ORDER BY st.symbol
""".strip()

# Per (session, pair, tier): the take-profit funnel, latencies, markups, P&L and inventory.
TIER_REPORT = """
WITH tp AS (
    SELECT t.* FROM take_profits t
    WHERE %(session_id)s::text IS NULL OR t.session_id = %(session_id)s
),
sold AS (
    SELECT f.session_id, f.order_id, sum(f.quantity) AS quantity,
           sum(f.price * f.quantity) AS notional, sum(f.fee) AS fees, max(f.timestamp) AS last_at
    FROM fills f
    WHERE f.side = 'sell' AND (%(session_id)s::text IS NULL OR f.session_id = %(session_id)s)
    GROUP BY f.session_id, f.order_id
),
bought AS (
    SELECT f.session_id, f.order_id AS position,
           (sum(f.price * f.quantity) + sum(f.fee)) / sum(f.quantity) AS basis,
           min(f.timestamp) AS opened_at
    FROM fills f
    WHERE f.side = 'buy' AND (%(session_id)s::text IS NULL OR f.session_id = %(session_id)s)
    GROUP BY f.session_id, f.order_id
),
first_tp AS (
    SELECT DISTINCT ON (session_id, position) session_id, order_id
    FROM tp ORDER BY session_id, position, created_at, generation, order_id
),
per_tp AS (
    SELECT tp.session_id, tp.symbol, tp.tier, tp.markup, tp.generation, tp.amends, tp.status,
           coalesce(s.quantity >= tp.amount, false) AS filled,
           CASE WHEN ft.order_id IS NOT NULL
                THEN extract(epoch FROM tp.created_at - b.opened_at) END AS fill_to_tp_s,
           CASE WHEN s.quantity >= tp.amount
                THEN extract(epoch FROM s.last_at - tp.created_at) END AS tp_to_fill_s,
           CASE WHEN s.quantity >= tp.amount
                THEN (s.notional - s.fees) / s.quantity / b.basis - 1 END AS captured,
           s.notional - s.fees - b.basis * s.quantity AS realized,
           b.basis * (coalesce(s.quantity * extract(epoch FROM s.last_at - b.opened_at), 0)
                      + CASE WHEN s.quantity >= tp.amount OR tp.status <> 'open' THEN 0
                             ELSE (tp.amount - coalesce(s.quantity, 0))
                                  * extract(epoch FROM coalesce(se.ended_at, now()) - b.opened_at)
                        END) / 3600 AS inventory
    FROM tp
    LEFT JOIN sold s ON (s.session_id, s.order_id) = (tp.session_id, tp.order_id)
    LEFT JOIN bought b ON (b.session_id, b.position) = (tp.session_id, tp.position)
    LEFT JOIN first_tp ft ON (ft.session_id, ft.order_id) = (tp.session_id, tp.order_id)
    LEFT JOIN sessions se ON se.id = tp.session_id
)
SELECT session_id, symbol, tier,
       count(*) AS placed,
       count(*) FILTER (WHERE filled) AS filled,
       count(*) FILTER (WHERE amends > 0 OR generation > 0 OR status = 'replaced') AS repriced,
       count(*) FILTER (WHERE NOT filled AND status = 'open') AS open,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY fill_to_tp_s) AS fill_to_tp_p50_s,
       percentile_disc(0.9) WITHIN GROUP (ORDER BY fill_to_tp_s) AS fill_to_tp_p90_s,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY tp_to_fill_s) AS tp_to_fill_p50_s,
       percentile_disc(0.9) WITHIN GROUP (ORDER BY tp_to_fill_s) AS tp_to_fill_p90_s,
       avg(markup) FILTER (WHERE filled) AS markup_planned,
       avg(captured) AS markup_captured,
       coalesce(sum(realized), 0) AS realized_pnl,
       coalesce(sum(inventory), 0) AS inventory_hours
FROM per_tp
GROUP BY session_id, symbol, tier
ORDER BY session_id, symbol, tier NULLS LAST
""".strip()

# Per pair, after each fill (replayed in the order of session_pair_stats' FIFO: time, order id,
# price, quantity): the cumulative FIFO realized P&L net of fees. FIFO matches the first
# min(bought, sold) units of each side, so realized = cost of the first M sold units - cost of
# the first M bought units - fees; each side's cost of its first x units is read off its
# piecewise linear curve (the segment of the fill holding unit x).
PNL_SERIES = """
WITH f AS (
    SELECT symbol, timestamp AS at, side, price, quantity,
           row_number() OVER w AS k,
           sum(CASE WHEN side = 'buy' THEN quantity ELSE 0 END) OVER w AS bought,
           sum(CASE WHEN side = 'sell' THEN quantity ELSE 0 END) OVER w AS sold,
           sum(fee) OVER w AS fees
    FROM fills
    WHERE session_id = %(session_id)s
    WINDOW w AS (PARTITION BY symbol ORDER BY timestamp, order_id COLLATE "C", price, quantity
                 ROWS UNBOUNDED PRECEDING)
),
curve AS (
    SELECT symbol, side, price,
           CASE WHEN side = 'buy' THEN bought ELSE sold END - quantity AS lo,
           sum(price * quantity) OVER (PARTITION BY symbol, side ORDER BY k
                                       ROWS UNBOUNDED PRECEDING) - price * quantity AS below
    FROM f
),
points AS (
    SELECT f.symbol, s.side, f.k, least(f.bought, f.sold) AS pos, 0 AS kind,
           NULL::numeric AS price, NULL::numeric AS lo, NULL::numeric AS below
    FROM f CROSS JOIN (VALUES ('buy'), ('sell')) AS s(side)
    UNION ALL
    SELECT symbol, side, NULL, lo, 1, price, lo, below FROM curve
),
grouped AS (
    SELECT *, count(price) OVER (PARTITION BY symbol, side ORDER BY pos, kind
                                 ROWS UNBOUNDED PRECEDING) AS segment
    FROM points
),
costs AS (
    SELECT symbol, side, k, pos,
           coalesce(max(below) OVER g + max(price) OVER g * (pos - max(lo) OVER g), 0) AS cost
    FROM grouped
    WINDOW g AS (PARTITION BY symbol, side, segment)
)
SELECT f.at, f.symbol, sc.cost - bc.cost - f.fees AS cumulative_pnl
FROM f
JOIN costs bc ON bc.symbol = f.symbol AND bc.k = f.k AND bc.side = 'buy'
JOIN costs sc ON sc.symbol = f.symbol AND sc.k = f.k AND sc.side = 'sell'
ORDER BY f.symbol, f.k
""".strip()

# Per pair, at each buy fill and take-profit placement: bought quantity so far, the part of it
# take-profits cover, the rest, and the ratio. Reconstructed from fills and take_profits: a
# position's coverage is min(its bought quantity, the amounts of its take-profits placed so
# far), a take-profit that was replaced, cancelled or gone counting until the position's next
# take-profit is placed (filled ones keep covering what they sold, as in Redis).
COVERAGE_SERIES = """
WITH tp AS (
    SELECT symbol, position, amount, created_at,
           CASE WHEN status IN ('replaced', 'canceled', 'gone')
                THEN lead(created_at) OVER (PARTITION BY symbol, position
                                            ORDER BY created_at, generation, order_id)
           END AS released_at
    FROM take_profits
    WHERE session_id = %(session_id)s
),
deltas AS (
    SELECT symbol, order_id AS position, timestamp AS at, quantity AS bought, 0 AS offered
    FROM fills WHERE session_id = %(session_id)s AND side = 'buy'
    UNION ALL
    SELECT symbol, position, created_at, 0, amount FROM tp
    UNION ALL
    SELECT symbol, position, released_at, 0, -amount FROM tp WHERE released_at IS NOT NULL
),
per_position AS (
    SELECT symbol, position, at, sum(bought) AS bought, sum(offered) AS offered
    FROM deltas GROUP BY symbol, position, at
),
running AS (
    SELECT symbol, position, at, bought,
           least(sum(bought) OVER p, greatest(sum(offered) OVER p, 0)) AS covered
    FROM per_position
    WINDOW p AS (PARTITION BY symbol, position ORDER BY at ROWS UNBOUNDED PRECEDING)
),
steps AS (
    SELECT symbol, at, sum(bought) AS bought,
           sum(covered - coalesce(prev, 0)) AS covered
    FROM (SELECT *, lag(covered) OVER (PARTITION BY symbol, position ORDER BY at) AS prev
          FROM running) r
    GROUP BY symbol, at
),
totals AS (
    SELECT at, symbol, sum(bought) OVER s AS bought, sum(covered) OVER s AS covered
    FROM steps
    WINDOW s AS (PARTITION BY symbol ORDER BY at ROWS UNBOUNDED PRECEDING)
)
SELECT at, symbol, bought, covered, bought - covered AS uncovered,
       CASE WHEN bought > 0 THEN covered / bought END AS ratio
FROM totals
ORDER BY symbol, at
""".strip()

# Per tier, over every pair of the session: take-profits placed, repriced, filled, still open.
TP_FUNNEL = """
WITH sold AS (
    SELECT order_id, sum(quantity) AS quantity FROM fills
    WHERE session_id = %(session_id)s AND side = 'sell' GROUP BY order_id
)
SELECT t.tier,
       count(*) AS placed,
       count(*) FILTER (WHERE t.amends > 0 OR t.generation > 0 OR t.status = 'replaced')
           AS repriced,
       count(*) FILTER (WHERE s.quantity >= t.amount) AS filled,
       count(*) FILTER (WHERE coalesce(s.quantity < t.amount, true)
                          AND t.status = 'open') AS open
FROM take_profits t LEFT JOIN sold s USING (order_id)
WHERE t.session_id = %(session_id)s
GROUP BY t.tier
ORDER BY t.tier NULLS LAST
""".strip()

# One sample per filled take-profit: seconds from its placement to its last fill.
TIME_TO_FILL = """
SELECT t.symbol, t.tier, t.order_id, extract(epoch FROM s.last_at - t.created_at) AS seconds
FROM take_profits t
JOIN (SELECT order_id, sum(quantity) AS quantity, max(timestamp) AS last_at FROM fills
      WHERE session_id = %(session_id)s AND side = 'sell' GROUP BY order_id) s USING (order_id)
WHERE t.session_id = %(session_id)s AND s.quantity >= t.amount
ORDER BY t.symbol, t.tier NULLS LAST, seconds, t.order_id
""".strip()

# Per buy fill: the mid 1 min, 5 min and 1 h later (first recorded price at or after, within 10
# minutes of the horizon), as bps of the fill price; and each pair's average of each horizon
# (over the fills that have one).
MARKOUTS = """
WITH m AS (
    SELECT f.symbol, f.order_id, f.timestamp AS at, f.price, f.quantity,
           (SELECT (p.bid + p.ask) / 2 FROM prices p
             WHERE p.session_id = f.session_id AND p.symbol = f.symbol
               AND p.at >= f.timestamp + interval '1 minute'
               AND p.at < f.timestamp + interval '1 minute' + interval '10 minutes'
             ORDER BY p.at LIMIT 1) AS mid_1m,
           (SELECT (p.bid + p.ask) / 2 FROM prices p
             WHERE p.session_id = f.session_id AND p.symbol = f.symbol
               AND p.at >= f.timestamp + interval '5 minutes'
               AND p.at < f.timestamp + interval '5 minutes' + interval '10 minutes'
             ORDER BY p.at LIMIT 1) AS mid_5m,
           (SELECT (p.bid + p.ask) / 2 FROM prices p
             WHERE p.session_id = f.session_id AND p.symbol = f.symbol
               AND p.at >= f.timestamp + interval '1 hour'
               AND p.at < f.timestamp + interval '1 hour' + interval '10 minutes'
             ORDER BY p.at LIMIT 1) AS mid_1h
    FROM fills f
    WHERE f.session_id = %(session_id)s AND f.side = 'buy'
),
bps AS (
    SELECT symbol, order_id, at, price, quantity,
           (mid_1m - price) * 10000 / price AS markout_1m_bps,
           (mid_5m - price) * 10000 / price AS markout_5m_bps,
           (mid_1h - price) * 10000 / price AS markout_1h_bps
    FROM m
)
SELECT *,
       avg(markout_1m_bps) OVER (PARTITION BY symbol) AS pair_avg_1m_bps,
       avg(markout_5m_bps) OVER (PARTITION BY symbol) AS pair_avg_5m_bps,
       avg(markout_1h_bps) OVER (PARTITION BY symbol) AS pair_avg_1h_bps
FROM bps
ORDER BY symbol, at, order_id
""".strip()

# Per session (the newest first): status, pairs, realized P&L in total and since midnight UTC,
# the share of bought quantity take-profits cover now, and the last stop-loss level recorded.
# P&L before midnight is FIFO over the fills before it: the first min(bought, sold) units of
# each side matched (see PNL_SERIES), so today's = total - that.
OVERVIEW = """
WITH s AS (
    SELECT * FROM sessions WHERE %(session)s::text IS NULL OR id = %(session)s
    ORDER BY started_at DESC, id LIMIT %(limit)s
),
day AS (SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS start),
f AS (
    SELECT f.session_id, f.symbol, f.side, f.price, f.quantity, f.fee,
           sum(f.quantity) OVER (PARTITION BY f.session_id, f.symbol, f.side
                                 ORDER BY f.timestamp, f.order_id COLLATE "C", f.price, f.quantity
                                 ROWS UNBOUNDED PRECEDING) - f.quantity AS prior
    FROM fills f JOIN s ON s.id = f.session_id, day
    WHERE f.timestamp < day.start
),
matched AS (
    SELECT session_id, symbol,
           least(coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0),
                 coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0)) AS units,
           sum(fee) AS fees
    FROM f GROUP BY session_id, symbol
),
before_today AS (
    SELECT f.session_id,
           sum(CASE WHEN f.side = 'sell' THEN 1 ELSE -1 END * f.price
               * greatest(least(f.quantity, m.units - f.prior), 0))
           - sum(f.fee) AS realized
    FROM f JOIN matched m USING (session_id, symbol)
    GROUP BY f.session_id
),
bought AS (
    SELECT session_id, order_id, sum(quantity) AS quantity FROM fills
    WHERE side = 'buy' AND session_id IN (SELECT id FROM s) GROUP BY session_id, order_id
),
offered AS (
    SELECT session_id, position, sum(amount) AS amount FROM take_profits
    WHERE status IN ('open', 'filled') AND session_id IN (SELECT id FROM s)
    GROUP BY session_id, position
),
coverage AS (
    SELECT b.session_id, sum(least(b.quantity, coalesce(o.amount, 0))) / sum(b.quantity) AS ratio
    FROM bought b
    LEFT JOIN offered o ON (o.session_id, o.position) = (b.session_id, b.order_id)
    WHERE EXISTS (SELECT 1 FROM take_profits t WHERE t.session_id = b.session_id)
    GROUP BY b.session_id
),
stop AS (
    SELECT DISTINCT ON (session_id) session_id,
           details -> 'stoploss' ->> 'stoploss_level' AS stoploss_level,
           details -> 'stoploss' ->> 'drawdown' AS drawdown
    FROM settlement_runs
    WHERE session_id IN (SELECT id FROM s) AND jsonb_typeof(details -> 'stoploss') = 'object'
    ORDER BY session_id, finished_at DESC, id DESC
),
pnl AS (
    SELECT session_id, sum(realized_pnl) AS total FROM session_pair_stats
    WHERE session_id IN (SELECT id FROM s) GROUP BY session_id
)
SELECT s.id AS session_id, s.status, s.mode, s.pairs, s.started_at, s.ended_at, s.migrated_at,
       coalesce(pnl.total, 0) AS realized_pnl,
       coalesce(pnl.total, 0) - coalesce(bt.realized, 0) AS realized_pnl_today,
       coverage.ratio AS coverage_ratio,
       stop.stoploss_level,
       stop.drawdown::numeric AS drawdown
FROM s
LEFT JOIN pnl ON pnl.session_id = s.id
LEFT JOIN before_today bt ON bt.session_id = s.id
LEFT JOIN coverage ON coverage.session_id = s.id
LEFT JOIN stop ON stop.session_id = s.id
ORDER BY s.started_at DESC, s.id
""".strip()

# Every query the docs show verbatim (tests/unit/test_monitoring_doc.py).
DOCUMENTED = {
    "PAIR_PNL": PAIR_PNL,
    "TIER_REPORT": TIER_REPORT,
    "PNL_SERIES": PNL_SERIES,
    "COVERAGE_SERIES": COVERAGE_SERIES,
    "TP_FUNNEL": TP_FUNNEL,
    "TIME_TO_FILL": TIME_TO_FILL,
    "MARKOUTS": MARKOUTS,
    "OVERVIEW": OVERVIEW,
}


async def _rows(
    pool: AsyncConnectionPool, query: LiteralString, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The query's rows as dicts. Raises StoreUnavailable / IntegrityError (``pg_errors``)."""
    async with pg_errors(), pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(query, params)
        return list(await cur.fetchall())


async def pair_pnl(pool: AsyncConnectionPool, session_id: str) -> list[dict[str, Any]]:
    """Per pair: orders, fills, volumes, fees, FIFO realized P&L, open quantity, TPs filled."""
    return await _rows(pool, PAIR_PNL, {"session_id": session_id})


async def tier_report(pool: AsyncConnectionPool, session_id: str | None) -> list[dict[str, Any]]:
    """Per (session_id, symbol, tier) — every session when ``session_id`` is None: placed,
    filled, repriced, open; fill_to_tp_p50_s/_p90_s (a position's first buy fill to its first
    take-profit), tp_to_fill_p50_s/_p90_s (placement to last fill of filled take-profits;
    nearest-rank percentiles, None without a sample); markup_planned, markup_captured (averages,
    fractions: 0.01 = 1 %); realized_pnl; inventory_hours. ``tier`` is the tier's minimum age in
    minutes, None for take-profits recovered unpriced."""
    return await _rows(pool, TIER_REPORT, {"session_id": session_id})


async def pnl_series(pool: AsyncConnectionPool, session_id: str) -> list[dict[str, Any]]:
    """Per symbol, one point per fill in replay order: at, symbol, cumulative_pnl (FIFO realized
    net of fees; the last point of a pair equals its ``session_pair_stats.realized_pnl``)."""
    return await _rows(pool, PNL_SERIES, {"session_id": session_id})


async def coverage_series(pool: AsyncConnectionPool, session_id: str) -> list[dict[str, Any]]:
    """Per symbol, at each buy fill or take-profit placement: at, symbol, bought, covered,
    uncovered (quantities, cumulative) and ratio (covered / bought; None before a buy)."""
    return await _rows(pool, COVERAGE_SERIES, {"session_id": session_id})


async def tp_funnel(pool: AsyncConnectionPool, session_id: str) -> list[dict[str, Any]]:
    """Per tier (all pairs): tier, placed, repriced, filled, open."""
    return await _rows(pool, TP_FUNNEL, {"session_id": session_id})


async def time_to_fill(pool: AsyncConnectionPool, session_id: str) -> list[dict[str, Any]]:
    """One row per filled take-profit: symbol, tier, order_id, seconds (placement to fill)."""
    return await _rows(pool, TIME_TO_FILL, {"session_id": session_id})


async def markouts(pool: AsyncConnectionPool, session_id: str) -> list[dict[str, Any]]:
    """One row per buy fill: symbol, order_id, at, price, quantity, markout_1m_bps,
    markout_5m_bps, markout_1h_bps (None without a recorded price that late), and the pair's
    averages pair_avg_1m_bps, pair_avg_5m_bps, pair_avg_1h_bps (the same on every row of a
    pair)."""
    return await _rows(pool, MARKOUTS, {"session_id": session_id})


async def overview(
    pool: AsyncConnectionPool, limit: int = 100, session_id: str | None = None
) -> list[dict[str, Any]]:
    """The newest ``limit`` sessions of the warehouse (or just ``session_id``): session_id,
    status, mode, pairs (list),
    started_at, ended_at, migrated_at, realized_pnl, realized_pnl_today (since midnight UTC),
    coverage_ratio (None without buys or without take-profits copied), stoploss_level (str,
    None if never measured), drawdown."""
    return await _rows(pool, OVERVIEW, {"limit": limit, "session": session_id})
