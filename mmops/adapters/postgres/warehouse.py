"""Writing one session's Redis data into PostgreSQL, in one transaction.

Orders and fills arrive as TSV lines of records the domain's rules already passed. The
transaction first upserts the session row, whose lock it then holds, and decides under it how
the rows go in:

- a session with nothing in PostgreSQL yet (its first migration): the checks run in Python
  (:mod:`first_copy`: each record once, an order id under two pairs kept once, fills whose order
  is missing set apart, executions de-duplicated by the unique key) and the rows go with COPY
  straight into ``orders`` and, in batches of whole pairs, ``fills``;
- any other: streamed with COPY into temporary staging tables (dropped at commit), then moved
  with set-based statements: orders upserted, fills inserted de-duplicated by the unique
  constraints (``ON CONFLICT DO NOTHING``).

Either way what PostgreSQL cannot take as it is (a fill whose order does not exist, an order id
recorded under two pairs) is returned to the caller to quarantine, and ``session_pair_stats``
is recomputed in SQL from the rows, by a statement that also counts, per pair, the rows and
rejects the transaction holds (what completeness compares with Redis). The conflict-safe path
holds nothing in memory beyond one chunk; the first one a session's order lines, then its order
ids, and a batch of at least ``FILL_BATCH`` executions while the batch before is written
(PostgreSQL writes a batch while the next pairs are read from Redis and checked).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.errors import DataError, IntegrityError, UniqueViolation
from psycopg.sql import SQL, Identifier
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from mmops import logs
from mmops.adapters.postgres.analytics_sync import copy_analytics
from mmops.adapters.postgres.first_copy import (
    FILL_COPY_COLUMNS,
    ORDER_COPY_COLUMNS,
    FillPick,
    OrderPick,
    copy_text,
)
from mmops.adapters.postgres.pool import pg_errors
from mmops.adapters.postgres.rejects import storable, write_rejects
from mmops.domain.models import Session
from mmops.domain.records import (
    FILL_LINE_COLUMNS,
    ORDER_LINE_COLUMNS,
    AnalyticsCopy,
    FillMove,
    MigrationCounts,
    OrderMove,
    PairRows,
    Reject,
    RejectKind,
    Stray,
)
from mmops.errors import BadDataError
from mmops.ports import PriceSource, TakeProfitSource

log = logs.get_logger("mmops.migration")

# The kinds completeness counts (an analytics reject, a price or a take-profit, is neither).
_REJECT_KINDS = frozenset({RejectKind.ORDER.value, RejectKind.FILL.value})

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
# A session's first migration writes straight into the tables (see first_copy).
_COPY_ORDERS_FIRST = f"COPY orders ({', '.join(ORDER_COPY_COLUMNS)}) FROM STDIN"
_COPY_FILLS_FIRST = f"COPY fills ({', '.join(FILL_COPY_COLUMNS)}) FROM STDIN"
_COPY_LINES = 5000
# First migration: a session's fills go to PostgreSQL in COPYs of at least this many executions
# (whole pairs, one pair after another): each COPY statement costs PostgreSQL about half a
# millisecond to start and end, so one per pair of a thousand fills added a tenth to the
# COPY's work. Memory: one batch while it is written, the next being gathered.
FILL_BATCH = 5000
# A session's first migration: nothing of it in PostgreSQL, not even a reject.
_FIRST = """
SELECT NOT EXISTS (SELECT 1 FROM orders WHERE session_id = %(session)s)
   AND NOT EXISTS (SELECT 1 FROM fills WHERE session_id = %(session)s)
   AND NOT EXISTS (SELECT 1 FROM migration_rejects WHERE session_id = %(session)s)
"""

# Every statement of a session's transaction reads one session's rows of tables that grow as a
# run goes. psycopg prepares a statement run five times on a connection, and PostgreSQL may then
# switch to a generic plan, costed from statistics taken when few sessions were in: it expects
# each session to be a large part of the table and scans the whole table for each (a sequential
# scan to find that a new session has no rows: 1.5 to 2 CPU seconds a run of 100 sessions).
# Planning each execution for its own session's values keeps the index lookups.
_CUSTOM_PLANS = "SET LOCAL plan_cache_mode = force_custom_plan"

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
             trade_id COLLATE "C" NULLS LAST, redis_key COLLATE "C"
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
# compares), price, quantity (unique per pair by the natural key). The open side is read again
# only for a pair whose position is not flat (LATERAL: whatever the statistics make the planner
# expect of the totals, a flat pair's fills are read once).
# The same statement returns, per pair, the rows it counted and the records quarantined of each
# kind: what completeness compares with Redis, counted in the session's own transaction.
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
open_cost AS (
    SELECT t.symbol, open_lots.cost
    FROM totals t CROSS JOIN LATERAL (
        SELECT sum(price * least(quantity, open - newer)) AS cost
        FROM (
            SELECT f.price, f.quantity, abs(t.buy_volume - t.sell_volume) AS open,
                   sum(f.quantity) OVER (ORDER BY f.timestamp DESC, f.order_id COLLATE "C" DESC,
                                                  f.price DESC, f.quantity DESC
                                         ROWS UNBOUNDED PRECEDING) - f.quantity AS newer
            FROM fills f
            WHERE f.session_id = %(session)s AND f.symbol = t.symbol
              AND f.side = CASE WHEN t.buy_volume > t.sell_volume THEN 'buy' ELSE 'sell' END
        ) open_side
        WHERE newer < open
    ) open_lots
    WHERE t.buy_volume <> t.sell_volume
),
order_counts AS (
    SELECT symbol, count(*) AS orders FROM orders WHERE session_id = %(session)s GROUP BY symbol
),
written AS (
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
    -- No WHERE on this update: every pair returns its row, which completeness counts.
    ON CONFLICT (session_id, symbol) DO UPDATE SET
        orders = EXCLUDED.orders, fills = EXCLUDED.fills, buy_volume = EXCLUDED.buy_volume,
        sell_volume = EXCLUDED.sell_volume, buy_notional = EXCLUDED.buy_notional,
        sell_notional = EXCLUDED.sell_notional, fees = EXCLUDED.fees,
        realized_pnl = EXCLUDED.realized_pnl, open_quantity = EXCLUDED.open_quantity,
        updated_at = now()
    RETURNING symbol, orders, fills
),
rejected AS (
    SELECT symbol, count(*) FILTER (WHERE kind = 'order') AS orders,
           count(*) FILTER (WHERE kind = 'fill') AS fills
    FROM migration_rejects WHERE session_id = %(session)s GROUP BY symbol
)
SELECT w.symbol, w.orders, w.fills, coalesce(r.orders, 0), coalesce(r.fills, 0)
FROM written w LEFT JOIN rejected r USING (symbol)
"""


class WarehouseTransaction:
    """One session's migration transaction (``MigrationTransaction``; see
    :meth:`Warehouse.session`).

    On the session's first migration (``first``: it had no order, fill or reject in
    PostgreSQL when its row was locked) the checks run in Python (:mod:`first_copy`) and the
    rows go with one COPY straight into ``orders`` and, in batches of whole pairs, into
    ``fills``. Otherwise they go through the staging tables and the conflict-safe statements.
    A first COPY that meets a row anyway (written outside migration, a value spelled two ways,
    or a trade id recorded for two executions) is rolled back to its savepoint and its rows
    (the session's orders, or the batch's fills) are redone the conflict-safe way."""

    def __init__(self, conn: AsyncConnection, session: Session, *, first: bool) -> None:
        self._conn = conn
        self.session = session
        self.first = first
        self._params = {"session": session.id, "pairs": list(session.pairs)}
        self._staged_fills = 0
        self._staging = False
        self._orders = OrderPick() if first else None  # first: until the orders are written
        self._fills: FillPick | None = None  # first: once the orders are written
        self._distinct: Counter[str] = Counter()  # first: executions per pair
        self._inserted = 0
        self._batch: list[tuple[str, list[str]]] = []  # first: pairs taken, not yet written
        self._batched = 0  # their executions
        self._writing: asyncio.Task[None] | None = None  # first: a batch's COPY under way

    async def stage_orders(self, lines: Sequence[str]) -> None:
        """Take TSV lines (``ORDER_LINE_COLUMNS``): held for the first COPY, or staged."""
        if self._orders is not None:
            self._orders.add(lines)
        else:
            await self._stage(_COPY_ORDERS, lines)

    async def stage_fills(self, lines: Sequence[str]) -> None:
        """Take TSV lines (``FILL_LINE_COLUMNS``), the chunks of one pair after another: picked
        for the first COPY (a pair's executions taken when the next pair's lines arrive, and
        written in batches), or staged."""
        if self._fills is None:
            await self._stage(_COPY_FILLS, lines)
            self._staged_fills += len(lines)
            return
        held = self._fills.symbol
        if lines and held is not None and held != lines[0].split("\t", 3)[2]:
            await self._take_pair(held, self._fills.take(), last=False)
        self._fills.add(lines)

    async def _take_pair(self, symbol: str | None, lines: list[str], *, last: bool) -> None:
        """Add a pair's executions to the batch; once it holds FILL_BATCH executions (or the
        last pair is in) its COPY starts, and goes on while the next pairs are read from Redis
        and checked: PostgreSQL and Python work at once within one session too."""
        if symbol is not None:
            self._batch.append((symbol, lines))
            self._batched += len(lines)
        if self._batched >= FILL_BATCH or (last and self._batch):
            batch, self._batch, self._batched = self._batch, [], 0
            await self.written()
            self._writing = asyncio.create_task(self._write_fills(batch))

    async def reject(self, rejects: Sequence[Reject]) -> None:
        if rejects:
            await self.written()  # not inside the savepoint of a batch's COPY
        await write_rejects(self._conn, self.session.id, rejects)

    async def written(self) -> None:
        """Wait for the COPY under way, if any (its error is raised here; cancelling the wait
        cancels it)."""
        if self._writing is not None:
            try:
                await self._writing
            finally:
                self._writing = None

    async def move_orders(self) -> OrderMove:
        """Write the orders taken; return what was written, the records read per pair, and
        the copies of an order id already recorded under another pair (not written)."""
        if self._orders is None:
            return await self._move_staged_orders()
        picked, self._orders = self._orders, None
        rows, records, strays = picked.pick(_pair_index(self.session))
        try:
            async with self._conn.transaction():  # a savepoint
                await self._copy(_COPY_ORDERS_FIRST, rows)
        except UniqueViolation:  # an order written outside migration: upsert them all
            log.info("migration.conflict_retried", session=self.session.id, table="orders")
            await self._stage(_COPY_ORDERS, picked.lines)
            return await self._move_staged_orders()
        self._fills = FillPick(picked.order_ids)
        return OrderMove(written=len(rows), records=dict(records), strays=strays)

    async def move_fills(self) -> FillMove:
        """Write the fills taken whose order exists, one per execution, skipping those already
        in PostgreSQL; the others are left for :meth:`orphans`."""
        if self._fills is None:
            return await self._move_staged_fills()
        await self._take_pair(self._fills.symbol, self._fills.take(), last=True)
        await self.written()
        return FillMove(self._fills.received, self._inserted, dict(self._distinct))

    async def orphans(self, chunk: int = 1000) -> AsyncIterator[list[Stray]]:
        """The fills taken whose order does not exist (not written), each record once, in
        chunks (the conflict-safe path reads them from a server-side cursor: a session that
        lost its orders does not load all its fills at once)."""
        if self._fills is not None:
            strays = list(self._fills.orphans.values())
            for start in range(0, len(strays), chunk):
                yield strays[start : start + chunk]
            return
        async with self._conn.cursor(name="orphans") as cur:
            await cur.execute(_ORPHANS, self._params)
            while rows := await cur.fetchmany(chunk):
                yield [Stray(symbol, key, reason) for symbol, key, reason in rows]

    async def recompute_stats(self) -> MigrationCounts:
        """session_pair_stats of every pair of the session from the rows now in PostgreSQL;
        return what PostgreSQL holds of each pair (rows, and records quarantined by kind), as
        this transaction will commit it."""
        cur = await self._conn.execute(_STATS, self._params)
        return MigrationCounts({
            symbol: PairRows(int(orders), int(fills), {RejectKind.ORDER: int(bad_orders),
                                                       RejectKind.FILL: int(bad_fills)})
            for symbol, orders, fills, bad_orders, bad_fills in await cur.fetchall()
        })  # fmt: skip

    async def copy_analytics(
        self, prices: PriceSource, take_profits: TakeProfitSource
    ) -> AnalyticsCopy:
        """The session's recorded prices and take-profit metadata (after its orders: the
        take-profits copied are those of its ``take_profit`` orders), counted back. No
        savepoint: an error here fails the session, whose transaction rolls back whole."""
        try:
            return await copy_analytics(
                self._conn, self.session.id, prices=prices, take_profits=take_profits
            )
        except (DataError, IntegrityError) as e:
            # A record the checks let through and PostgreSQL refuses fails this session's
            # migration (reported, retried next run), never the whole run.
            raise BadDataError(f"analytics of session {self.session.id}: {e}") from e

    async def _write_fills(self, batch: list[tuple[str, list[str]]]) -> None:
        """COPY the executions of the pairs of ``batch`` into ``fills``; if one meets a row (a
        value spelled two ways, a trade id recorded for two executions), insert the batch the
        conflict-safe way instead."""
        try:
            async with self._conn.transaction():  # a savepoint
                await self._copy_text(
                    _COPY_FILLS_FIRST, [line for _, lines in batch for line in lines], copy_text
                )
        except UniqueViolation:
            log.info("migration.conflict_retried", session=self.session.id, table="fills",
                     pairs=[symbol for symbol, _ in batch])  # fmt: skip
            for _, lines in batch:
                await self._stage(_COPY_FILLS, lines)
            cur = await self._conn.execute(_MOVE_FILLS.format(conflict=_SKIP_FILLS), self._params)
            for pair, distinct, inserted in await cur.fetchall():
                self._distinct[pair] += int(distinct)
                self._inserted += int(inserted)
            await self._conn.execute("DELETE FROM fills_staging")
            return
        for symbol, lines in batch:
            self._distinct[symbol] += len(lines)
            self._inserted += len(lines)

    async def _move_staged_orders(self) -> OrderMove:
        await self._ensure_staging()
        await self._conn.execute(_RANK_ORDERS)
        records = await (await self._conn.execute(_ORDER_RECORDS)).fetchall()
        duplicates = await (await self._conn.execute(_DUPLICATE_ORDERS)).fetchall()
        [(written,)] = await self._move("orders", _MOVE_ORDERS, _UPDATE_ORDERS)
        return OrderMove(
            written=int(written),
            records={symbol: int(n) for symbol, n in records},
            strays=[Stray(symbol, key, reason) for symbol, key, reason in duplicates],
        )

    async def _move_staged_fills(self) -> FillMove:
        await self._ensure_staging()
        per_pair = await self._move("fills", _MOVE_FILLS, _SKIP_FILLS)
        await self._conn.execute(_CLEAR_RESOLVED, self._params)
        return FillMove(
            self._staged_fills,
            inserted=sum(int(inserted) for _, _, inserted in per_pair),
            distinct={symbol: int(n) for symbol, n, _ in per_pair},
        )

    async def _stage(self, statement: str, lines: Sequence[str]) -> None:
        await self._ensure_staging()
        await self._copy(statement, lines)

    async def _ensure_staging(self) -> None:
        if not self._staging:
            await self._conn.execute(_STAGING)
            self._staging = True

    async def _copy(self, statement: str, lines: Sequence[str]) -> None:
        """COPY ``lines`` with ``statement``, a few thousand lines per write."""
        await self._copy_text(statement, lines, "".join)

    async def _copy_text(
        self, statement: str, lines: Sequence[str], text: Callable[[Sequence[str]], str]
    ) -> None:
        """COPY ``text`` of ``lines`` with ``statement``, a few thousand lines per write."""
        async with self._conn.cursor().copy(statement) as copy:
            for start in range(0, len(lines), _COPY_LINES):
                await copy.write(text(lines[start : start + _COPY_LINES]))

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


def _pair_index(session: Session) -> dict[str, int]:
    return {pair: index for index, pair in enumerate(session.pairs)}


class Warehouse:
    """PostgreSQL as migration writes it (``MigrationTarget``)."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @contextlib.asynccontextmanager
    async def session(self, session: Session) -> AsyncIterator[WarehouseTransaction]:
        """One transaction for the whole session: committed on a clean exit, rolled back on
        any error, so an interrupted migration leaves no half-written session."""
        async with pg_errors(), self._pool.connection() as conn, conn.transaction():
            await conn.execute(_CUSTOM_PLANS)
            await conn.execute(
                _UPSERT_SESSION,
                (
                    session.id, session.status.value, session.mode, session.exchange,
                    session.capital, session.started_at, session.ended_at,
                    Jsonb(list(session.pairs)), session.pair_count,
                ),
            )  # fmt: skip
            # The upsert holds the session's row lock until this transaction ends, so another
            # migration of the session (another worker, `mmops migrate --session`) waits here,
            # then sees this one's rows: only one of them can find the session without rows
            # and take the first-migration COPY.
            cur = await conn.execute(_FIRST, {"session": session.id})
            first = bool((await cur.fetchone() or (False,))[0])
            log.info("migration.path", session=session.id, first=first)
            tx = WarehouseTransaction(conn, session, first=first)
            try:
                yield tx
            except BaseException:
                # A COPY still under way ends before the rollback; its own error, if any, is a
                # consequence of this one.
                with contextlib.suppress(Exception):
                    await tx.written()
                raise
            await tx.written()

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
        """Per pair: orders, fills, and the records of each kind quarantined, as committed.
        Migration counts them inside the session's transaction (``recompute_stats``); this is
        the independent count after the commit the tests compare it with."""
        async with pg_errors(), self._pool.connection() as conn:
            rows: dict[str, dict[str, int]] = {"orders": {}, "fills": {}}
            for table, found in rows.items():
                cur = await conn.execute(
                    f"SELECT symbol, count(*) FROM {table} WHERE session_id = %s GROUP BY symbol",  # noqa: S608 - fixed names
                    (session_id,),
                    prepare=False,  # planned for this session (see _CUSTOM_PLANS)
                )
                found.update((symbol, int(n)) for symbol, n in await cur.fetchall())
            cur = await conn.execute(
                "SELECT symbol, kind, count(*) FROM migration_rejects"
                " WHERE session_id = %s GROUP BY 1, 2",
                (session_id,),
                prepare=False,
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
        fields = {storable(k): storable(v) for k, v in raw.items()}
        async with pg_errors(), self._pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO ingest_rejects (stream, message_id, session_id, raw, reason,"
                " received_at) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (stream, message_id) DO NOTHING",
                (stream, message_id, session_id, Jsonb(fields), storable(reason), received_at),
            )
            return cur.rowcount == 1
