"""Writing one session's Redis data into PostgreSQL, in one transaction.

Orders and fills arrive as TSV lines of records the domain's rules already passed. They are
streamed in with COPY into temporary staging tables (dropped at commit), then moved with
set-based statements: orders upserted, fills inserted de-duplicated by the unique constraints
(``ON CONFLICT DO NOTHING``). What PostgreSQL cannot take as it is (a fill whose order does not
exist, an order id recorded under two pairs) is returned to the caller to quarantine, and
``session_pair_stats`` is recomputed in SQL from the rows. Nothing is held in memory beyond one
chunk.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.sql import SQL, Identifier
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from mmops import logs
from mmops.adapters.postgres.pool import pg_errors
from mmops.domain.models import Session
from mmops.domain.records import (
    FILL_LINE_COLUMNS,
    ORDER_LINE_COLUMNS,
    FillMove,
    MigrationCounts,
    OrderMove,
    PairRows,
    Reject,
    RejectKind,
    Stray,
)

log = logs.get_logger("mmops.migration")

_REJECT_KINDS = frozenset(kind.value for kind in RejectKind)

_STAGING = """
CREATE TEMP TABLE orders_staging (
    order_id TEXT, session_id TEXT, symbol TEXT, side TEXT, price NUMERIC, amount NUMERIC,
    filled NUMERIC, status TEXT, kind TEXT, client_order_id TEXT, created_at TIMESTAMPTZ,
    redis_key TEXT
) ON COMMIT DROP;
CREATE TEMP TABLE fills_staging (
    session_id TEXT, order_id TEXT, symbol TEXT, side TEXT, price NUMERIC, quantity NUMERIC,
    fee NUMERIC, timestamp TIMESTAMPTZ, trade_id TEXT, redis_key TEXT
) ON COMMIT DROP;
"""
_COPY_ORDERS = f"COPY orders_staging ({', '.join(ORDER_LINE_COLUMNS)}) FROM STDIN"
_COPY_FILLS = f"COPY fills_staging ({', '.join(FILL_LINE_COLUMNS)}) FROM STDIN"

_UPSERT_SESSION = """
INSERT INTO sessions (id, status, mode, exchange, capital, started_at, ended_at, pairs, pair_count)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET
    status = EXCLUDED.status, mode = EXCLUDED.mode, exchange = EXCLUDED.exchange,
    capital = EXCLUDED.capital, started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at,
    pairs = EXCLUDED.pairs, pair_count = EXCLUDED.pair_count, updated_at = now()
"""

# Each statement that writes rows a session may already have ends its INSERT with {conflict}:
# nothing when the session has none of them yet (a plain INSERT, about a third cheaper than the
# speculative insertion of ON CONFLICT), else the clause after it (see WarehouseTransaction._move).

# The staged orders, each Redis record once (HSCAN may return a field twice), ranked among the
# records of their order id: an order id recorded under two pairs is kept once (its first pair
# by name) and the other copies are quarantined, so one bad record cannot fail the session.
# Built once, then read by the three statements after it. Sorts name COLLATE "C" where the
# order only has to be fixed: byte order is several times cheaper than a locale's.
_RANK_ORDERS = """
CREATE TEMP TABLE orders_ranked ON COMMIT DROP AS
SELECT *, first_value(symbol) OVER w AS first_symbol, row_number() OVER w AS n
FROM (SELECT DISTINCT ON (redis_key COLLATE "C") * FROM orders_staging
      ORDER BY redis_key COLLATE "C") records
WINDOW w AS (PARTITION BY order_id COLLATE "C" ORDER BY symbol COLLATE "C", redis_key COLLATE "C")
"""
# Per pair, the Redis records read: what completeness compares with the rows.
_ORDER_RECORDS = "SELECT symbol, count(*) FROM orders_ranked GROUP BY symbol"
_DUPLICATE_ORDERS = """
SELECT symbol, redis_key, 'order id ' || order_id || ' also recorded under ' || first_symbol
FROM orders_ranked WHERE n > 1
"""
_MOVE_ORDERS = SQL("""
WITH written AS (
    INSERT INTO orders (session_id, order_id, symbol, pair_index, side, kind, price, amount,
                        filled, status, client_order_id, created_at)
    SELECT %(session)s, order_id, symbol, array_position(%(pairs)s::text[], symbol) - 1, side,
           kind, price, amount, filled, status, client_order_id, created_at
    FROM orders_ranked WHERE n = 1
    ORDER BY order_id COLLATE "C"  -- the primary key's order (under a C collation)
    {conflict}
    RETURNING 1
)
SELECT count(*) FROM written
""")
_UPDATE_ORDERS = SQL("""
ON CONFLICT (session_id, order_id) DO UPDATE SET
    symbol = EXCLUDED.symbol, pair_index = EXCLUDED.pair_index, filled = EXCLUDED.filled,
    status = EXCLUDED.status, client_order_id = EXCLUDED.client_order_id, updated_at = now()
""")

# The staged fills whose order exists, one per execution (the natural unique key; a replay
# under another Redis key collapses), inserted in the unique key's order so each index page is
# in cache while its rows go in. ON CONFLICT skips what PostgreSQL already holds (a re-run) and
# a second fill with the same exchange trade id. Per pair: distinct executions read, and rows
# inserted, which completeness and the summary report.
_MOVE_FILLS = SQL("""
WITH executions AS MATERIALIZED (
    SELECT DISTINCT ON (order_id COLLATE "C", symbol COLLATE "C", timestamp, price, quantity)
           order_id, symbol, side, price, quantity, fee, trade_id, timestamp
    FROM fills_staging s
    WHERE EXISTS (SELECT 1 FROM orders o WHERE o.session_id = %(session)s
                  AND o.order_id = s.order_id)
    ORDER BY order_id COLLATE "C", symbol COLLATE "C", timestamp, price, quantity,
             trade_id NULLS LAST, redis_key COLLATE "C"
), inserted AS (
    INSERT INTO fills (session_id, order_id, symbol, side, price, quantity, fee, trade_id,
                       timestamp)
    SELECT %(session)s, order_id, symbol, side, price, quantity, fee, trade_id, timestamp
    FROM executions
    {conflict}
    RETURNING symbol
)
SELECT e.symbol, e.n, coalesce(i.n, 0)
FROM (SELECT symbol, count(*) AS n FROM executions GROUP BY symbol) e
LEFT JOIN (SELECT symbol, count(*) AS n FROM inserted GROUP BY symbol) i USING (symbol)
""")
_SKIP_FILLS = SQL("ON CONFLICT DO NOTHING")

_ORPHANS = """
SELECT DISTINCT symbol, redis_key, 'fill references order ' || order_id || ', which does not exist'
FROM fills_staging s
WHERE NOT EXISTS (SELECT 1 FROM orders o WHERE o.session_id = %(session)s
                  AND o.order_id = s.order_id)
"""

# One row per Redis record (a hash of its key: keys can be long), holding its latest text and
# the kind of record it is (what completeness counts it as).
_REJECT = """
INSERT INTO migration_rejects (session_id, kind, symbol, redis_key, raw_payload, reason)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (session_id, md5(redis_key)) DO UPDATE SET
    symbol = EXCLUDED.symbol, raw_payload = EXCLUDED.raw_payload, reason = EXCLUDED.reason
WHERE (migration_rejects.raw_payload, migration_rejects.reason)
      IS DISTINCT FROM (EXCLUDED.raw_payload, EXCLUDED.reason)
"""

# A fill quarantined as an orphan in an earlier run whose order has since arrived is no longer
# a reject: it is in fills now.
_CLEAR_RESOLVED = """
DELETE FROM migration_rejects r USING fills_staging s
WHERE r.session_id = %(session)s AND r.redis_key = s.redis_key
  AND EXISTS (SELECT 1 FROM orders o WHERE o.session_id = %(session)s AND o.order_id = s.order_id)
"""

# Aggregates per pair from the rows in fills. FIFO realized P&L without replaying the fills:
# every quantity either matched a later opposite fill or is still open, so the gross P&L of the
# matches is sell notional - buy notional + the signed cost of the open lots. Under FIFO the
# open lots are all on the side of the net position and are that side's latest quantity (an
# older unit would have been matched before a newer one), so their cost is the price of each
# fill on that side times the part of it within the last |net| units, newest first in the
# order the domain's fifo_pnl replays them: time, then order id (by code point, as Python
# compares), price, quantity (unique per pair by the natural key).
_STATS = """
WITH totals AS (
    SELECT symbol, count(*) AS fills,
           coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
           coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
           coalesce(sum(price * quantity) FILTER (WHERE side = 'buy'), 0) AS buy_notional,
           coalesce(sum(price * quantity) FILTER (WHERE side = 'sell'), 0) AS sell_notional,
           sum(fee) AS fees
    FROM fills WHERE session_id = %(session)s GROUP BY symbol
),
open_side AS (
    SELECT f.symbol, f.price, f.quantity, abs(t.buy_volume - t.sell_volume) AS open,
           sum(f.quantity) OVER (PARTITION BY f.symbol
                                 ORDER BY f.timestamp DESC, f.order_id COLLATE "C" DESC,
                                          f.price DESC, f.quantity DESC
                                 ROWS UNBOUNDED PRECEDING) - f.quantity AS newer
    FROM fills f JOIN totals t USING (symbol)
    WHERE f.session_id = %(session)s AND t.buy_volume <> t.sell_volume
      AND f.side = CASE WHEN t.buy_volume > t.sell_volume THEN 'buy' ELSE 'sell' END
),
open_cost AS (
    SELECT symbol, sum(price * least(quantity, open - newer)) AS cost
    FROM open_side WHERE newer < open GROUP BY symbol
),
order_counts AS (
    SELECT symbol, count(*) AS orders FROM orders WHERE session_id = %(session)s GROUP BY symbol
)
INSERT INTO session_pair_stats (session_id, symbol, orders, fills, buy_volume, sell_volume,
    buy_notional, sell_notional, fees, realized_pnl, open_quantity)
SELECT %(session)s, p.symbol, coalesce(o.orders, 0), coalesce(t.fills, 0),
       coalesce(t.buy_volume, 0), coalesce(t.sell_volume, 0), coalesce(t.buy_notional, 0),
       coalesce(t.sell_notional, 0), coalesce(t.fees, 0),
       coalesce(t.sell_notional - t.buy_notional - t.fees
                + sign(t.buy_volume - t.sell_volume) * coalesce(c.cost, 0), 0),
       coalesce(t.buy_volume - t.sell_volume, 0)
FROM unnest(%(pairs)s::text[]) AS p(symbol)
LEFT JOIN totals t USING (symbol)
LEFT JOIN open_cost c USING (symbol)
LEFT JOIN order_counts o USING (symbol)
ON CONFLICT (session_id, symbol) DO UPDATE SET
    orders = EXCLUDED.orders, fills = EXCLUDED.fills, buy_volume = EXCLUDED.buy_volume,
    sell_volume = EXCLUDED.sell_volume, buy_notional = EXCLUDED.buy_notional,
    sell_notional = EXCLUDED.sell_notional, fees = EXCLUDED.fees,
    realized_pnl = EXCLUDED.realized_pnl, open_quantity = EXCLUDED.open_quantity,
    updated_at = now()
"""


class WarehouseTransaction:
    """One session's migration transaction (``MigrationTransaction``; see
    :meth:`Warehouse.session`)."""

    def __init__(self, conn: AsyncConnection, session: Session) -> None:
        self._conn = conn
        self.session = session
        self._params = {"session": session.id, "pairs": list(session.pairs)}
        self._staged_fills = 0

    async def stage_orders(self, lines: Sequence[str]) -> None:
        """COPY TSV lines (``ORDER_LINE_COLUMNS``) into the staging table."""
        async with self._conn.cursor().copy(_COPY_ORDERS) as copy:
            await copy.write("".join(lines))

    async def stage_fills(self, lines: Sequence[str]) -> None:
        """COPY TSV lines (``FILL_LINE_COLUMNS``) into the staging table."""
        async with self._conn.cursor().copy(_COPY_FILLS) as copy:
            await copy.write("".join(lines))
        self._staged_fills += len(lines)

    async def reject(self, rejects: Sequence[Reject]) -> None:
        if not rejects:
            return
        async with self._conn.cursor() as cur:
            await cur.executemany(
                _REJECT,
                [
                    (
                        self.session.id,
                        r.kind.value,
                        r.symbol,
                        _storable(r.key),
                        _storable(r.raw),
                        _storable(r.reason),
                    )
                    for r in rejects
                ],
            )

    async def move_orders(self) -> OrderMove:
        """Upsert the staged orders; return what was written, the records read per pair, and
        the copies of an order id already recorded under another pair (not written)."""
        await self._conn.execute(_RANK_ORDERS)
        records = await (await self._conn.execute(_ORDER_RECORDS)).fetchall()
        duplicates = await (await self._conn.execute(_DUPLICATE_ORDERS)).fetchall()
        [(written,)] = await self._move("orders", _MOVE_ORDERS, _UPDATE_ORDERS)
        return OrderMove(
            written=int(written),
            records={symbol: int(n) for symbol, n in records},
            strays=[Stray(symbol, key, reason) for symbol, key, reason in duplicates],
        )

    async def move_fills(self) -> FillMove:
        """Insert the staged fills whose order exists, one per execution, skipping those
        already in PostgreSQL; the others are left for :meth:`orphans`."""
        per_pair = await self._move("fills", _MOVE_FILLS, _SKIP_FILLS)
        await self._conn.execute(_CLEAR_RESOLVED, self._params)
        return FillMove(
            self._staged_fills,
            inserted=sum(int(inserted) for _, _, inserted in per_pair),
            distinct={symbol: int(n) for symbol, n, _ in per_pair},
        )

    async def orphans(self, chunk: int = 1000) -> AsyncIterator[list[Stray]]:
        """The staged fills whose order does not exist (not inserted), each record once, in
        chunks from a server-side cursor: a session that lost its orders does not load all its
        fills at once."""
        async with self._conn.cursor(name="orphans") as cur:
            await cur.execute(_ORPHANS, self._params)
            while rows := await cur.fetchmany(chunk):
                yield [Stray(symbol, key, reason) for symbol, key, reason in rows]

    async def _move(self, table: str, statement: SQL, conflict: SQL) -> list[tuple[Any, ...]]:
        """Run ``statement`` as a plain INSERT if the session has no rows in ``table`` yet, else
        with ``conflict``. A plain INSERT that meets a row anyway (another process migrating the
        same session, a trade id recorded twice with different details) is rolled back to its
        savepoint and the statement runs again with ``conflict``."""
        if not await self._has_rows(table):
            try:
                async with self._conn.transaction():  # a savepoint
                    cur = await self._conn.execute(statement.format(conflict=SQL("")), self._params)
                    return await cur.fetchall()
            except UniqueViolation:
                log.info("migration.conflict_retried", session=self.session.id, table=table)
        cur = await self._conn.execute(statement.format(conflict=conflict), self._params)
        return await cur.fetchall()

    async def _has_rows(self, table: str) -> bool:
        query = SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE session_id = %s)").format(
            Identifier(table)
        )
        row = await (await self._conn.execute(query, (self.session.id,))).fetchone()
        return bool(row and row[0])

    async def recompute_stats(self) -> None:
        """session_pair_stats of every pair of the session from the rows now in PostgreSQL."""
        await self._conn.execute(_STATS, self._params)


def _storable(text: str) -> str:
    """``text`` as PostgreSQL can store it: a NUL and lone surrogates (which hostile records can
    hold) written as escapes, so their reject is recorded instead of failing the session."""
    if "\x00" in text or not text.isascii():
        text = text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    return text


class Warehouse:
    """PostgreSQL as migration writes it (``MigrationTarget``)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def session(self, session: Session) -> AsyncIterator[WarehouseTransaction]:
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
            yield WarehouseTransaction(conn, session)

    async def pending_sessions(self, limit: int, after: str | None = None) -> list[str]:
        """Ids of sessions whose migration is not complete, in id order, after ``after``."""
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM sessions WHERE migrated_at IS NULL"
                " AND (%s::text IS NULL OR id > %s) ORDER BY id LIMIT %s",
                (after, after, limit),
            )
            return [row[0] for row in await cur.fetchall()]

    async def counts(self, session_id: str) -> MigrationCounts:
        """Per pair: orders, fills, and the records of each kind quarantined."""
        async with pg_errors(), self._pool.connection() as conn:
            rows: dict[str, dict[str, int]] = {"orders": {}, "fills": {}}
            for table, found in rows.items():
                cur = await conn.execute(
                    f"SELECT symbol, count(*) FROM {table} WHERE session_id = %s GROUP BY symbol",  # noqa: S608 - fixed names
                    (session_id,),
                )
                found.update((symbol, int(n)) for symbol, n in await cur.fetchall())
            cur = await conn.execute(
                "SELECT symbol, kind, count(*) FROM migration_rejects"
                " WHERE session_id = %s GROUP BY 1, 2",
                (session_id,),
            )
            rejected: dict[str, dict[RejectKind, int]] = {}
            for symbol, kind, n in await cur.fetchall():
                if kind in _REJECT_KINDS:  # a row 004 backfilled from an unknown key counts nowhere
                    rejected.setdefault(symbol or "?", {})[RejectKind(kind)] = int(n)
        symbols = rows["orders"].keys() | rows["fills"].keys() | rejected.keys()
        return MigrationCounts(
            {
                symbol: PairRows(
                    orders=rows["orders"].get(symbol, 0),
                    fills=rows["fills"].get(symbol, 0),
                    rejected=rejected.get(symbol, {}),
                )
                for symbol in symbols
            }
        )

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

    async def record_ingest_reject(
        self,
        stream: str,
        message_id: str,
        session_id: str | None,
        raw: Mapping[str, str],
        reason: str,
        received_at: datetime,
    ) -> bool:
        """Quarantine one ingest message in ``ingest_rejects``; False if it already was (a
        redelivered message is recorded once). Text PostgreSQL cannot store (a NUL, lone
        surrogates) is kept with backslash escapes. Raises StoreUnavailable."""
        fields = {_storable(k): _storable(v) for k, v in raw.items()}
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO ingest_rejects (stream, message_id, session_id, raw, reason,"
                " received_at) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (stream, message_id) DO NOTHING",
                (stream, message_id, session_id, Jsonb(fields), _storable(reason), received_at),
            )
            return cur.rowcount == 1
