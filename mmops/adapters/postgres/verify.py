"""Integrity queries behind ``mmops db verify``. Each names one kind of problem and counts it."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from mmops.adapters.postgres.pool import unavailable


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    description: str
    count_sql: str  # returns one row: (problem count, up to 5 example ids as text[])


CHECKS: tuple[Check, ...] = (
    Check(
        "orphan_orders",
        "orders whose session does not exist",
        """SELECT count(*), (array_agg(o.session_id || '/' || o.order_id))[1:5]
           FROM orders o LEFT JOIN sessions s ON s.id = o.session_id WHERE s.id IS NULL""",
    ),
    Check(
        "orphan_fills",
        "fills whose order does not exist",
        """SELECT count(*), (array_agg(f.session_id || '/' || f.order_id))[1:5]
           FROM fills f LEFT JOIN orders o
             ON o.session_id = f.session_id AND o.order_id = f.order_id
           WHERE o.order_id IS NULL""",
    ),
    Check(
        "fills_without_session",
        "fills whose session does not exist",
        """SELECT count(*), (array_agg(f.session_id || '#' || f.id))[1:5]
           FROM fills f LEFT JOIN sessions s ON s.id = f.session_id WHERE s.id IS NULL""",
    ),
    Check(
        "duplicate_fills",
        "fills stored more than once (same session, order, pair, time, price, quantity)",
        """SELECT coalesce(sum(n - 1), 0), (array_agg(k))[1:5] FROM (
             SELECT count(*) AS n, session_id || '/' || order_id AS k FROM fills
             GROUP BY session_id, order_id, symbol, timestamp, price, quantity
             HAVING count(*) > 1) d""",
    ),
    Check(
        "pair_count_mismatch",
        "sessions whose pair_count differs from jsonb_array_length(pairs)",
        """SELECT count(*), (array_agg(id))[1:5] FROM sessions
           WHERE pair_count <> jsonb_array_length(pairs)""",
    ),
    Check(
        "order_pair_unknown",
        "orders whose symbol is missing or not one of the session's pairs",
        """SELECT count(*), (array_agg(o.session_id || '/' || o.order_id))[1:5]
           FROM orders o JOIN sessions s ON s.id = o.session_id
           WHERE o.symbol IS NULL OR NOT (s.pairs ? o.symbol)""",
    ),
    Check(
        "fill_pair_unknown",
        "fills whose symbol is not one of the session's pairs",
        """SELECT count(*), (array_agg(f.session_id || '#' || f.id))[1:5]
           FROM fills f JOIN sessions s ON s.id = f.session_id WHERE NOT (s.pairs ? f.symbol)""",
    ),
    Check(
        "stats_mismatch",
        "session_pair_stats rows that differ from aggregates of the raw fills",
        """SELECT count(*), (array_agg(st.session_id || '/' || st.symbol))[1:5]
           FROM session_pair_stats st
           LEFT JOIN (
             SELECT session_id, symbol, count(*) AS fills,
                    coalesce(sum(quantity) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
                    coalesce(sum(quantity) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
                    coalesce(sum(fee), 0) AS fees
             FROM fills GROUP BY session_id, symbol) raw
             ON raw.session_id = st.session_id AND raw.symbol = st.symbol
           WHERE st.fills <> coalesce(raw.fills, 0)
              OR st.buy_volume <> coalesce(raw.buy_volume, 0)
              OR st.sell_volume <> coalesce(raw.sell_volume, 0)
              OR st.fees <> coalesce(raw.fees, 0)""",
    ),
)


@dataclass(frozen=True, slots=True)
class Problem:
    check: str
    description: str
    count: int
    examples: tuple[str, ...]


def verify(database_url: str) -> list[Problem]:
    """Run every check; return the problems found (an empty list means the data is sound)."""
    try:
        with psycopg.connect(database_url, connect_timeout=5) as conn:
            problems = []
            for check in CHECKS:
                row = conn.execute(check.count_sql).fetchone()
                count = int(row[0]) if row and row[0] is not None else 0
                if count:
                    examples = tuple(row[1] or ()) if row else ()
                    problems.append(Problem(check.name, check.description, count, examples))
            return problems
    except psycopg.OperationalError as e:
        raise unavailable(e) from None
