"""Migrations 007-analytics (``prices``, ``take_profits``) and 009-price-path (``price_path``)
add their tables and roll back cleanly."""

from __future__ import annotations

import psycopg
import pytest

from mmops.adapters.postgres import schema

pytestmark = pytest.mark.integration


def analytics_tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_name IN ('prices', 'take_profits')"
        ).fetchall()
    return {r[0] for r in rows}


def test_007_adds_the_analytics_tables_and_rolls_back(empty_database_url: str) -> None:
    url = empty_database_url
    assert "007-analytics" in schema.upgrade(url)
    assert analytics_tables(url) == {"prices", "take_profits"}
    with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            "INSERT INTO prices (session_id, symbol, at, bid, ask)"
            " VALUES ('s', 'BTC/USD', now(), 0, 1)"
        )
    rolled = schema.downgrade(url, "006-work-leases")
    assert "007-analytics" in rolled and "006-work-leases" not in rolled
    assert analytics_tables(url) == set()
    assert "007-analytics" in schema.upgrade(url)
    assert analytics_tables(url) == {"prices", "take_profits"}


def test_009_adds_the_price_path_and_rolls_back(empty_database_url: str) -> None:
    url = empty_database_url
    assert "009-price-path" in schema.upgrade(url)
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO price_path (session_id, symbol, at, bid, ask)"
            " VALUES ('s', 'BTC/USD', now(), 1, 2)"
        )
        conn.execute("UPDATE sessions SET path_through = '1-0'")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO price_path (session_id, symbol, at, bid, ask)"
                " VALUES ('s', 'BTC/USD', now() + interval '1s', 1, 0)"
            )
    rolled = schema.downgrade(url, "008-work-lease-parts")
    assert rolled == ["009-price-path"]
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT to_regclass('price_path')").fetchone()
        assert found == (None,)
    assert "009-price-path" in schema.upgrade(url)
