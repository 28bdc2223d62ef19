"""What the tier backtest reads from the warehouse about one session: its row, its buy fills
(each grows the position of its buy order), the tickers settlement recorded on each run
(``prices``, migration 007), the fill path the paper loop recorded (``price_path``, migration
009; empty for a live session), its take-profit fills (sell fills of orders in
``take_profits``) and the tiers its take-profits were priced at.

A row that fails the domain's checks is not dropped silently: it is left out and returned in
``bad`` with the reason, and the command prints how many there were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from mmops.adapters.postgres.pool import pg_errors
from mmops.adapters.postgres.sessions import SessionRepository
from mmops.domain.backtest import BuyFill, PricePoint, RealSell, SessionHistory
from mmops.errors import InvalidIdentifier

T = TypeVar("T")

BUYS = """
SELECT order_id, symbol, timestamp, price, quantity, fee FROM fills
WHERE session_id = %(session_id)s AND side = 'buy'
ORDER BY timestamp, id
""".strip()

PRICES = """
SELECT symbol, at, bid, ask FROM prices
WHERE session_id = %(session_id)s
ORDER BY symbol, at
""".strip()

PATH = """
SELECT symbol, at, bid, ask FROM price_path
WHERE session_id = %(session_id)s
ORDER BY symbol, at
""".strip()

TAKE_PROFIT_SELLS = """
SELECT tp.position, f.symbol, f.timestamp, f.price, f.quantity, f.fee FROM fills f
JOIN take_profits tp ON tp.session_id = f.session_id AND tp.order_id = f.order_id
WHERE f.session_id = %(session_id)s AND f.side = 'sell'
ORDER BY f.timestamp, f.id
""".strip()

PLANNED_TIERS = """
SELECT DISTINCT symbol, tier, markup FROM take_profits
WHERE session_id = %(session_id)s AND tier IS NOT NULL AND markup IS NOT NULL
ORDER BY symbol, tier, markup
""".strip()


async def read_history(pool: AsyncConnectionPool, session_id: str) -> SessionHistory | None:
    """The session's history, or None if the warehouse has no such session.

    Raises StoreUnavailable / IntegrityError (``pg_errors``) if PostgreSQL fails, e.g. when
    migration 009 (``price_path``) is not applied.
    """
    session = await SessionRepository(pool).get(session_id)
    if session is None:
        return None
    args = {"session_id": session_id}
    bad: list[str] = []
    async with pg_errors(), pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(BUYS, args)
        buys = _parse(await cur.fetchall(), _buy, "fills", bad)
        await cur.execute(PRICES, args)
        prices = _parse(await cur.fetchall(), _price, "prices", bad)
        await cur.execute(PATH, args)
        path = _parse(await cur.fetchall(), _price, "price path", bad)
        await cur.execute(TAKE_PROFIT_SELLS, args)
        sells = _parse(await cur.fetchall(), _sell, "take-profit fills", bad)
        await cur.execute(PLANNED_TIERS, args)
        tiers = [(r["symbol"], int(r["tier"]), r["markup"]) for r in await cur.fetchall()]
    return SessionHistory(session, buys, prices, sells, tuple(tiers), tuple(bad), path)


def _parse(
    rows: list[dict[str, Any]], build: Callable[[dict[str, Any]], T], what: str, bad: list[str]
) -> tuple[T, ...]:
    parsed: list[T] = []
    for row in rows:
        try:
            parsed.append(build(row))
        except (ValueError, TypeError, InvalidIdentifier) as e:
            bad.append(f"{what}: {e}")
    return tuple(parsed)


def _buy(r: dict[str, Any]) -> BuyFill:
    return BuyFill(r["order_id"], r["symbol"], r["timestamp"], r["price"], r["quantity"], r["fee"])


def _price(r: dict[str, Any]) -> PricePoint:
    return PricePoint(r["symbol"], r["at"], r["bid"], r["ask"])


def _sell(r: dict[str, Any]) -> RealSell:
    return RealSell(r["position"], r["symbol"], r["timestamp"], r["price"], r["quantity"], r["fee"])
