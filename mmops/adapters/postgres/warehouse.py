"""Writing one session's Redis data into PostgreSQL, in one transaction.

Orders and fills are streamed in with COPY into temporary staging tables (dropped at commit),
then moved with set-based statements: orders upserted, fills inserted de-duplicated by the
unique constraints (``ON CONFLICT DO NOTHING``), fills whose order does not exist quarantined in
``migration_rejects`` with their raw payload. Nothing is held in memory beyond one chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres.pool import pg_errors
from mmops.domain.models import Fill, Session, Side
from mmops.domain.pnl import PairPnL, fifo_pnl
from mmops.domain.records import FillMove, Reject, StagedFill, StagedOrder

_STAGING = """
CREATE TEMP TABLE orders_staging (
    order_id TEXT, symbol TEXT, side TEXT, kind TEXT, price NUMERIC, amount NUMERIC,
    filled NUMERIC, status TEXT, client_order_id TEXT, created_at TIMESTAMPTZ,
    redis_key TEXT, raw TEXT
) ON COMMIT DROP;
CREATE TEMP TABLE fills_staging (
    order_id TEXT, symbol TEXT, side TEXT, price NUMERIC, quantity NUMERIC, fee NUMERIC,
    trade_id TEXT, timestamp TIMESTAMPTZ, redis_key TEXT, raw TEXT
) ON COMMIT DROP;
CREATE TEMP TABLE fills_seen (
    order_id TEXT, symbol TEXT, timestamp TIMESTAMPTZ, price NUMERIC, quantity NUMERIC
) ON COMMIT DROP;
"""

_UPSERT_SESSION = """
INSERT INTO sessions (id, status, mode, exchange, capital, started_at, ended_at, pairs, pair_count)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    status = EXCLUDED.status, mode = EXCLUDED.mode, exchange = EXCLUDED.exchange,
    capital = EXCLUDED.capital, started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at,
    pairs = EXCLUDED.pairs, pair_count = EXCLUDED.pair_count, updated_at = now()
"""

# An order id recorded under two pairs is kept once (its first pair) and the other copies are
# quarantined, so one bad record cannot fail the whole session.
_REJECT_DUPLICATE_ORDERS = """
INSERT INTO migration_rejects (session_id, symbol, redis_key, raw_payload, reason)
SELECT %(session)s, symbol, redis_key, raw, 'order id ' || order_id || ' also recorded under '
       || first_symbol
FROM (SELECT *, first_value(symbol) OVER w AS first_symbol, row_number() OVER w AS n
      FROM orders_staging WINDOW w AS (PARTITION BY order_id ORDER BY symbol, redis_key)) ranked
WHERE n > 1
ON CONFLICT DO NOTHING
"""

_MOVE_ORDERS = """
INSERT INTO orders (session_id, order_id, symbol, pair_index, side, kind, price, amount, filled,
                    status, client_order_id, created_at)
SELECT DISTINCT ON (order_id) %(session)s, order_id, symbol,
       array_position(%(pairs)s::text[], symbol) - 1, side, kind, price, amount, filled, status,
       client_order_id, created_at
FROM orders_staging
ORDER BY order_id, symbol, redis_key
ON CONFLICT (session_id, order_id) DO UPDATE SET
    symbol = EXCLUDED.symbol, pair_index = EXCLUDED.pair_index, filled = EXCLUDED.filled,
    status = EXCLUDED.status, client_order_id = EXCLUDED.client_order_id, updated_at = now()
"""

_MOVE_FILLS = """
INSERT INTO fills (session_id, order_id, symbol, side, price, quantity, fee, trade_id, timestamp)
SELECT %(session)s, s.order_id, s.symbol, s.side, s.price, s.quantity, s.fee, s.trade_id,
       s.timestamp
FROM fills_staging s
WHERE EXISTS (SELECT 1 FROM orders o WHERE o.session_id = %(session)s AND o.order_id = s.order_id)
ON CONFLICT DO NOTHING
"""

_REJECT_ORPHANS = """
INSERT INTO migration_rejects (session_id, symbol, redis_key, raw_payload, reason)
SELECT %(session)s, s.symbol, s.redis_key, s.raw, 'fill references order ' || s.order_id
       || ', which does not exist'
FROM fills_staging s
WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.session_id = %(session)s
                  AND o.order_id = s.order_id)
ON CONFLICT DO NOTHING
"""

# A fill quarantined as an orphan in an earlier run whose order has since arrived is no longer
# a reject: it is in fills now.
_CLEAR_RESOLVED = """
DELETE FROM migration_rejects r USING fills_staging s
WHERE r.session_id = %(session)s AND r.redis_key = s.redis_key
  AND EXISTS (SELECT 1 FROM orders o WHERE o.session_id = %(session)s AND o.order_id = s.order_id)
"""

# The identities of the fills read from Redis that belong (their order exists), so completeness
# can count distinct executions the way the unique key does.
_SEEN = """
INSERT INTO fills_seen
SELECT order_id, symbol, timestamp, price, quantity FROM fills_staging s
WHERE EXISTS (SELECT 1 FROM orders o WHERE o.session_id = %(session)s AND o.order_id = s.order_id)
"""

_UPSERT_STATS = """
INSERT INTO session_pair_stats (session_id, symbol, orders, fills, buy_volume, sell_volume,
    buy_notional, sell_notional, fees, realized_pnl, open_quantity)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id, symbol) DO UPDATE SET
    orders = EXCLUDED.orders, fills = EXCLUDED.fills, buy_volume = EXCLUDED.buy_volume,
    sell_volume = EXCLUDED.sell_volume, buy_notional = EXCLUDED.buy_notional,
    sell_notional = EXCLUDED.sell_notional, fees = EXCLUDED.fees,
    realized_pnl = EXCLUDED.realized_pnl, open_quantity = EXCLUDED.open_quantity,
    updated_at = now()
"""


class SessionWrite:
    """One session's migration transaction (see :meth:`Warehouse.session`)."""

    def __init__(self, conn: AsyncConnection, session: Session) -> None:
        self._conn = conn
        self.session = session

    async def stage_orders(self, orders: Sequence[StagedOrder]) -> None:
        async with self._conn.cursor().copy(
            "COPY orders_staging (order_id, symbol, side, kind, price, amount, filled, status,"
            " client_order_id, created_at, redis_key, raw) FROM STDIN"
        ) as copy:
            for s in orders:
                o = s.order
                await copy.write_row((
                    o.order_id, o.symbol, o.side.value, o.kind.value, o.price, o.amount,
                    o.filled, o.status.value, o.client_order_id, o.created_at, s.key, s.raw,
                ))  # fmt: skip

    async def stage_fills(self, fills: Sequence[StagedFill]) -> None:
        async with self._conn.cursor().copy(
            "COPY fills_staging (order_id, symbol, side, price, quantity, fee, trade_id,"
            " timestamp, redis_key, raw) FROM STDIN"
        ) as copy:
            for s in fills:
                f = s.fill
                await copy.write_row((
                    f.order_id, f.symbol, f.side.value, f.price, f.quantity, f.fee, f.trade_id,
                    f.timestamp, s.key, s.raw,
                ))  # fmt: skip

    async def reject(self, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        async with self._conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO migration_rejects (session_id, symbol, redis_key, raw_payload, reason)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(self.session.id, r.symbol, r.key, r.raw, r.reason) for r in rejects],
            )

    async def move_orders(self) -> tuple[int, int]:
        """Upsert the staged orders; return (orders written, duplicates quarantined)."""
        params = {"session": self.session.id, "pairs": list(self.session.pairs)}
        rejected = (await self._conn.execute(_REJECT_DUPLICATE_ORDERS, params)).rowcount
        cur = await self._conn.execute(_MOVE_ORDERS, params)
        await self._conn.execute("TRUNCATE orders_staging")
        return cur.rowcount, max(rejected, 0)

    async def move_fills(self) -> FillMove:
        params = {"session": self.session.id}
        staged_cur = await self._conn.execute("SELECT count(*) FROM fills_staging")
        staged_row = await staged_cur.fetchone()
        inserted = (await self._conn.execute(_MOVE_FILLS, params)).rowcount
        orphan_row = await (
            await self._conn.execute(
                "SELECT count(*) FROM fills_staging s WHERE NOT EXISTS (SELECT 1 FROM orders o"
                " WHERE o.session_id = %(session)s AND o.order_id = s.order_id)",
                params,
            )
        ).fetchone()
        await self._conn.execute(_REJECT_ORPHANS, params)
        await self._conn.execute(_CLEAR_RESOLVED, params)
        await self._conn.execute(_SEEN, params)
        await self._conn.execute("TRUNCATE fills_staging")
        staged = int(staged_row[0]) if staged_row else 0
        orphans = int(orphan_row[0]) if orphan_row else 0
        return FillMove(inserted, orphans, staged)

    async def distinct_fills(self, symbol: str) -> int:
        """Distinct executions (order, pair, time, price, quantity) among the fills read from
        Redis in this transaction whose order exists."""
        cur = await self._conn.execute(
            "SELECT count(DISTINCT (order_id, symbol, timestamp, price, quantity)) FROM fills_seen"
            " WHERE symbol = %s",
            (symbol,),
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def recompute_stats(self) -> dict[str, PairPnL]:
        """session_pair_stats from the rows now in PostgreSQL (FIFO P&L from the domain)."""
        result = {}
        for symbol in self.session.pairs:
            pnl = fifo_pnl(self.session.id, symbol, await self._fills(symbol))
            row = await (
                await self._conn.execute(
                    "SELECT count(*) FROM orders WHERE session_id = %s AND symbol = %s",
                    (self.session.id, symbol),
                )
            ).fetchone()
            orders = int(row[0]) if row else 0
            await self._conn.execute(
                _UPSERT_STATS,
                (
                    self.session.id, symbol, orders, pnl.fills, pnl.buy_volume, pnl.sell_volume,
                    pnl.buy_notional, pnl.sell_notional, pnl.fees, pnl.realized, pnl.open_quantity,
                ),
            )  # fmt: skip
            result[symbol] = pnl
        return result

    async def _fills(self, symbol: str) -> list[Fill]:
        cur = self._conn.cursor(name="stats_fills")  # server-side: streamed, not loaded at once
        fills = []
        await cur.execute(
            "SELECT order_id, side, price, quantity, fee, timestamp, trade_id FROM fills"
            " WHERE session_id = %s AND symbol = %s ORDER BY timestamp, id",
            (self.session.id, symbol),
        )
        async for order_id, side, price, qty, fee, at, trade_id in cur:
            fills.append(Fill(self.session.id, order_id, symbol, Side(side), price, qty, fee, at,
                              trade_id))  # fmt: skip
        await cur.close()
        return fills


class Warehouse:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def session(self, session: Session) -> AsyncIterator[SessionWrite]:
        """One transaction for the whole session: committed on a clean exit, rolled back on
        any error, so an interrupted migration leaves no half-written session."""
        async with pg_errors(), self._pool.connection() as conn, conn.transaction():
            await conn.execute(_STAGING)
            await conn.execute(
                _UPSERT_SESSION,
                (
                    session.id, session.status.value, session.mode, session.exchange,
                    session.capital, session.started_at, session.ended_at,
                    Jsonb(list(session.pairs)), session.pair_count,
                ),
            )  # fmt: skip
            yield SessionWrite(conn, session)

    async def pending_sessions(self, limit: int, after: str | None = None) -> list[str]:
        """Ids of sessions whose migration is not complete, oldest first, after ``after``."""
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM sessions WHERE migrated_at IS NULL"
                " AND (%s::text IS NULL OR id > %s) ORDER BY id LIMIT %s",
                (after, after, limit),
            )
            return [row[0] for row in await cur.fetchall()]

    async def counts(self, session_id: str) -> dict[str, dict[str, int]]:
        """Per pair: orders, fills, and rejected order and fill records."""
        async with pg_errors(), self._pool.connection() as conn:
            result: dict[str, dict[str, int]] = {}
            for table, name in (("orders", "orders"), ("fills", "fills")):
                cur = await conn.execute(
                    f"SELECT symbol, count(*) FROM {table} WHERE session_id = %s GROUP BY symbol",  # noqa: S608 - fixed names
                    (session_id,),
                )
                for symbol, n in await cur.fetchall():
                    result.setdefault(symbol, {})[name] = int(n)
            cur = await conn.execute(
                "SELECT symbol, split_part(redis_key, ':', 1), count(*) FROM migration_rejects"
                " WHERE session_id = %s GROUP BY 1, 2",
                (session_id,),
            )
            for symbol, kind, n in await cur.fetchall():
                result.setdefault(symbol or "?", {})[f"rejected_{kind}"] = int(n)
            return result

    async def migration_lag_seconds(self) -> float | None:
        """Seconds since the oldest ended, not yet migrated session ended (None: none waits)."""
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT extract(epoch FROM now() - min(ended_at)) FROM sessions"
                " WHERE migrated_at IS NULL AND ended_at IS NOT NULL"
            )
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def mark_migrated(self, session_id: str, at: datetime) -> None:
        async with pg_errors(), self._pool.connection() as conn:
            await conn.execute(
                "UPDATE sessions SET migrated_at = %s, updated_at = now() WHERE id = %s",
                (at, session_id),
            )
