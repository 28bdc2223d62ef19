"""Migration's analytics step: a session's recorded prices (Redis ``prices:{S}``), its fill path
(``path:{S}``) and take-profit metadata (``tp_order:{S}:{O}``) copied into PostgreSQL
``prices``, ``price_path`` (migrations 007, 009) and ``take_profits``, inside the session's
migration transaction.

One call, :func:`copy_analytics`, after the session's orders are in ``orders`` (the take-profits
copied are those of its ``take_profit`` orders: a take-profit without an order record has no
fills PostgreSQL keeps either). Idempotent: prices are inserted ON CONFLICT DO NOTHING (a price
recorded is never revised), take-profits upserted (a later copy carries the later state). A
record that does not parse, or that PostgreSQL would refuse, goes to ``migration_rejects``
(kind ``price`` or ``take_profit``, which completeness counts as neither orders nor fills),
nothing is dropped silently. Then the rows PostgreSQL holds are counted against what was read.

Incremental: a run reads only the entries of each price series after the one its mark names
(``sessions.prices_through``, ``path_through``; moved on in the same transaction, so a restore
of an older backup brings back the matching mark) and only the take-profits not yet copied in
a final state, so an hourly migration of a long-running session does not read its whole
history again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection, sql

from mmops.adapters.postgres.rejects import write_rejects
from mmops.adapters.redis import keys
from mmops.domain.bounds import within_bounds
from mmops.domain.models import ZERO, Ticker
from mmops.domain.records import AnalyticsCopy, PriceSeries, Reject, RejectKind, TakeProfitRecord
from mmops.errors import BadRecordError
from mmops.ports import PriceSource, TakeProfitSource

TP_CHUNK = 500  # take-profit ids per Redis read
INT_MAX = 2**31 - 1  # PostgreSQL INTEGER


@dataclass(frozen=True, slots=True)
class _SeriesSql:
    """The statements of one price series: its table and its mark column in ``sessions``."""

    table: str
    mark: str

    @property
    def move_mark(self) -> sql.Composed:
        return sql.SQL("UPDATE sessions SET {} = %(through)s WHERE id = %(session)s").format(
            sql.Identifier(self.mark)
        )

    @property
    def insert(self) -> sql.Composed:
        return sql.SQL(_INSERT_POINTS).format(sql.Identifier(self.table))

    @property
    def count(self) -> sql.Composed:
        return sql.SQL(_COUNT_POINTS).format(sql.Identifier(self.table))


_INSERT_POINTS = """
INSERT INTO {} (session_id, symbol, at, bid, ask)
SELECT %(session)s, symbol, at, bid, ask
FROM unnest(%(symbols)s::text[], %(ats)s::timestamptz[], %(bids)s::numeric[], %(asks)s::numeric[])
     AS p(symbol, at, bid, ask)
ON CONFLICT (session_id, symbol, at) DO NOTHING
"""

_COUNT_POINTS = """
SELECT count(*) FROM {} p
JOIN unnest(%(symbols)s::text[], %(ats)s::timestamptz[]) AS r(symbol, at)
  ON (p.symbol, p.at) = (r.symbol, r.at)
WHERE p.session_id = %(session)s
"""

_SERIES = {
    PriceSeries.RUNS: _SeriesSql("prices", "prices_through"),
    PriceSeries.PATH: _SeriesSql("price_path", "path_through"),
}
_MARKS = "SELECT prices_through, path_through FROM sessions WHERE id = %(session)s"

# The session's take-profits whose copy may still change: not copied yet, or last copied open
# (filled, replaced, canceled and gone are final).
_TP_ORDER_IDS = """
SELECT o.order_id FROM orders o
WHERE o.session_id = %(session)s AND o.kind = 'take_profit'
  AND NOT EXISTS (SELECT 1 FROM take_profits t WHERE t.session_id = o.session_id
                  AND t.order_id = o.order_id AND t.status <> 'open')
ORDER BY o.order_id
"""

_UPSERT_TAKE_PROFITS = """
INSERT INTO take_profits (session_id, order_id, symbol, position, tier, markup, price, amount,
                          generation, amends, created_at, status)
SELECT %(session)s, * FROM unnest(
    %(order_ids)s::text[], %(symbols)s::text[], %(positions)s::text[], %(tiers)s::int[],
    %(markups)s::numeric[], %(prices)s::numeric[], %(amounts)s::numeric[],
    %(generations)s::int[], %(amends)s::int[], %(created)s::timestamptz[], %(statuses)s::text[])
ON CONFLICT (session_id, order_id) DO UPDATE SET
    symbol = EXCLUDED.symbol, position = EXCLUDED.position, tier = EXCLUDED.tier,
    markup = EXCLUDED.markup, price = EXCLUDED.price, amount = EXCLUDED.amount,
    generation = EXCLUDED.generation, amends = EXCLUDED.amends,
    created_at = EXCLUDED.created_at, status = EXCLUDED.status
"""

_COUNT_TAKE_PROFITS = """
SELECT count(*) FROM take_profits t
JOIN unnest(%(order_ids)s::text[], %(statuses)s::text[]) AS r(order_id, status)
  ON (t.order_id, t.status) = (r.order_id, r.status)
WHERE t.session_id = %(session)s
"""


async def copy_analytics(
    conn: AsyncConnection[Any],
    session_id: str,
    *,
    prices: PriceSource,
    take_profits: TakeProfitSource,
) -> AnalyticsCopy:
    """Copy each price series' entries recorded after the one its mark in ``sessions`` names
    (NULL: all; moved on in the same transaction) and the take-profits not yet final in
    PostgreSQL, on ``conn`` (the caller's transaction: nothing is committed here), and count
    what PostgreSQL holds of what was read. Raises what the stores raise (StoreUnavailable);
    psycopg errors are the caller's to map (``pg_errors``)."""
    cur = await conn.execute(_MARKS, {"session": session_id})  # both series' marks at once
    marks = await cur.fetchone() or (None, None)
    runs = await _copy_series(conn, session_id, prices, PriceSeries.RUNS, marks[0])
    path = await _copy_series(conn, session_id, prices, PriceSeries.PATH, marks[1])
    tps, tp_rejects = await _copy_take_profits(conn, session_id, take_profits)
    return AnalyticsCopy(
        session_id=session_id,
        last_price_id=runs.last,
        prices_read=runs.read,
        prices_held=runs.held,
        prices_rejected=runs.rejected,
        take_profits_read=len(tps),
        take_profits_held=await _count_take_profits(conn, session_id, tps),
        take_profits_rejected=tp_rejects,
        last_path_id=path.last,
        path_read=path.read,
        path_held=path.held,
        path_rejected=path.rejected,
    )


@dataclass(frozen=True, slots=True)
class _Copied:
    last: str | None  # the last entry id read (None: nothing new)
    read: int  # (pair, time) points read, distinct within each chunk
    held: int  # of those, rows PostgreSQL holds
    rejected: int


async def _copy_series(
    conn: AsyncConnection[Any],
    session_id: str,
    source: PriceSource,
    series: PriceSeries,
    after: str | None,
) -> _Copied:
    """Insert the series' points recorded after the entry ``after`` (its mark; None: all), a
    chunk per statement, count each chunk back (so memory stays one chunk, however long the
    session) and move the mark to the last entry read."""
    statements = _SERIES[series]
    read = held = rejected = 0
    last: str | None = None
    async for entry_id, chunk in source.read_after(session_id, after, series=series):
        last = entry_id
        rejected += await _reject(conn, session_id, RejectKind.PRICE, chunk.bad)
        points = list({(t.symbol, t.timestamp): t for t in chunk.items}.values())
        if points:
            params = _points(session_id, points)
            await conn.execute(statements.insert, params)
            read += len(points)
            held += await _count_points(conn, statements, params)
    if last is not None:
        await conn.execute(statements.move_mark, {"session": session_id, "through": last})
    return _Copied(last, read, held, rejected)


def _points(session_id: str, points: Sequence[Ticker]) -> dict[str, Any]:
    return {
        "session": session_id,
        "symbols": [t.symbol for t in points],
        "ats": [t.timestamp for t in points],
        "bids": [t.bid for t in points],
        "asks": [t.ask for t in points],
    }


async def _count_points(
    conn: AsyncConnection[Any], statements: _SeriesSql, params: dict[str, Any]
) -> int:
    cur = await conn.execute(statements.count, params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _copy_take_profits(
    conn: AsyncConnection[Any], session_id: str, source: TakeProfitSource
) -> tuple[list[tuple[str, TakeProfitRecord]], int]:
    cur = await conn.execute(_TP_ORDER_IDS, {"session": session_id})
    ids = [str(row[0]) for row in await cur.fetchall()]
    copied: list[tuple[str, TakeProfitRecord]] = []
    rejected = 0
    for start in range(0, len(ids), TP_CHUNK):
        read = await source.tp_orders(session_id, ids[start : start + TP_CHUNK])
        checked = [(oid, r, _unstorable(session_id, oid, r)) for oid, r in read.items]
        bad = [*read.bad, *(e for _, _, e in checked if e is not None)]
        rejected += await _reject(conn, session_id, RejectKind.TAKE_PROFIT, bad)
        items = [(oid, r) for oid, r, problem in checked if problem is None]
        if items:
            await conn.execute(_UPSERT_TAKE_PROFITS, _tp_params(session_id, items))
            copied.extend(items)
    return copied, rejected


def _unstorable(session_id: str, order_id: str, r: TakeProfitRecord) -> BadRecordError | None:
    """Why ``take_profits`` would refuse the record (its checks, INTEGER columns, the bound
    every amount keeps), so it is quarantined instead of failing the session's migration."""
    reason = None
    if not (r.price > 0 and r.amount > 0):
        reason = f"price {r.price} and amount {r.amount} must be positive"
    elif not all(within_bounds(v) for v in (r.price, r.amount, r.markup or ZERO)):
        reason = "an amount beyond the 40-digit bound"
    elif not all(0 <= n <= INT_MAX for n in (r.generation, r.tier or 0, r.amends)):
        reason = f"generation {r.generation}, tier {r.tier} or amends {r.amends} out of range"
    if reason is None:
        return None
    return BadRecordError(keys.tp_order(session_id, order_id), repr(r), reason)


def _tp_params(session_id: str, items: Sequence[tuple[str, TakeProfitRecord]]) -> dict[str, Any]:
    return {
        "session": session_id,
        "order_ids": [oid for oid, _ in items],
        "symbols": [r.pair for _, r in items],
        "positions": [r.position for _, r in items],
        "tiers": [r.tier for _, r in items],
        "markups": [r.markup for _, r in items],
        "prices": [r.price for _, r in items],
        "amounts": [r.amount for _, r in items],
        "generations": [r.generation for _, r in items],
        "amends": [r.amends for _, r in items],
        "created": [r.created_at for _, r in items],
        "statuses": [r.status.value for _, r in items],
    }


async def _count_take_profits(
    conn: AsyncConnection[Any], session_id: str, items: Sequence[tuple[str, TakeProfitRecord]]
) -> int:
    if not items:
        return 0
    params = {
        "session": session_id,
        "order_ids": [oid for oid, _ in items],
        "statuses": [r.status.value for _, r in items],
    }
    cur = await conn.execute(_COUNT_TAKE_PROFITS, params)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def _reject(
    conn: AsyncConnection[Any], session_id: str, kind: RejectKind, bad: Sequence[BadRecordError]
) -> int:
    """Quarantine ``bad`` (a price's pair is the end of its key); how many."""
    await write_rejects(conn, session_id, [
        Reject(kind, e.key.rsplit(":", 1)[-1] if kind is RejectKind.PRICE else None, e.key,
               str(e.raw), e.reason)
        for e in bad
    ])  # fmt: skip
    return len(bad)
