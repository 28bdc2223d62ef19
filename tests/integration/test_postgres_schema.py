"""Schema migrations and integrity checks against a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest

from mmops.adapters.postgres import schema
from mmops.adapters.postgres.verify import verify
from mmops.errors import ConfigurationError, StoreUnavailable

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {r[0] for r in rows if not r[0].startswith("_yoyo") and r[0] != "yoyo_lock"}


BASE_TABLES = {
    "sessions",
    "orders",
    "fills",
    "session_pair_stats",
    "migration_rejects",
    "settlement_runs",
    "ingest_rejects",
    "work_leases",
    "work_runs",
    "prices",
    "price_path",
    "take_profits",
}


def after(migration: str) -> list[str]:
    """The migrations after ``migration``, in the order an upgrade applies them."""
    ids = schema.migration_ids()
    return ids[ids.index(migration) + 1 :]


def down_to(migration: str) -> list[str]:
    """What a downgrade to ``migration`` rolls back, newest first."""
    return list(reversed(after(migration)))


def test_upgrade_downgrade_to_zero_and_upgrade_again(empty_database_url: str) -> None:
    url = empty_database_url
    assert schema.upgrade(url) == schema.migration_ids()
    assert tables(url) == BASE_TABLES
    assert schema.is_current(url)
    assert schema.upgrade(url) == []

    rolled_back = schema.downgrade(url, "001-add-multi-pair-support")
    assert rolled_back == down_to("001-add-multi-pair-support")
    assert rolled_back[-1] == "002-add-symbol-indexes"
    assert not schema.is_current(url)
    assert schema.downgrade(url, schema.ZERO) == ["001-add-multi-pair-support", "000-base"]
    assert tables(url) == set()
    assert [s.applied for s in schema.status(url)] == [False] * len(schema.migration_ids())

    assert schema.upgrade(url) == schema.migration_ids()
    assert tables(url) == BASE_TABLES


def test_multi_pair_columns_exist_after_001(empty_database_url: str) -> None:
    schema.upgrade(empty_database_url)
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(
            "INSERT INTO sessions (id, status, mode, exchange, started_at)"
            " VALUES ('s1', 'active', 'paper', 'paper', now())"
        )
        row = conn.execute("SELECT pairs, pair_count FROM sessions WHERE id = 's1'").fetchone()
    assert row == ([], 0)


def test_004_backfills_each_reject_kind_from_its_key_once_and_rolls_back(
    empty_database_url: str,
) -> None:
    url = empty_database_url
    schema.upgrade(url)
    assert schema.downgrade(url, "003-migration-keys") == down_to("003-migration-keys")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO migration_rejects (session_id, symbol, redis_key, raw_payload, reason)"
            " VALUES ('s1', 'BTC/USD', 'orders:{s1}:BTC/USD#o1', '{', 'bad'),"
            "        ('s1', 'BTC/USD', 'fills:{s1}:BTC/USD#t:1', '{', 'bad'),"
            "        ('s1', NULL, 'other:{s1}:BTC/USD#x', '{', 'bad')"
        )
    assert schema.upgrade(url) == after("003-migration-keys")
    with psycopg.connect(url) as conn:
        kinds = conn.execute("SELECT redis_key, kind FROM migration_rejects ORDER BY id").fetchall()
    assert kinds == [
        ("orders:{s1}:BTC/USD#o1", "order"),
        ("fills:{s1}:BTC/USD#t:1", "fill"),
        ("other:{s1}:BTC/USD#x", "other"),  # neither kind, counted as neither (as before)
    ]
    unnamed = pytest.raises(psycopg.errors.NotNullViolation)  # every writer names the kind
    with psycopg.connect(url, autocommit=True) as conn, unnamed:
        conn.execute(
            "INSERT INTO migration_rejects (session_id, symbol, redis_key, raw_payload, reason)"
            " VALUES ('s1', 'BTC/USD', 'orders:{s1}:BTC/USD#o2', '{', 'bad')"
        )
    assert schema.downgrade(url, "003-migration-keys") == down_to("003-migration-keys")
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_name = 'migration_rejects' AND column_name = 'kind'"
        ).fetchall()
        assert columns == []
        assert conn.execute("SELECT count(*) FROM migration_rejects").fetchone() == (3,)


def test_unknown_downgrade_target_is_a_configuration_error(empty_database_url: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown migration"):
        schema.downgrade(empty_database_url, "999-nope")


def insert_fill(conn: psycopg.Connection, trade_id: str | None = None, qty: str = "1") -> None:
    conn.execute(
        "INSERT INTO fills (session_id, order_id, symbol, side, price, quantity, fee, trade_id,"
        " timestamp) VALUES ('s1', 'o1', 'BTC/USD', 'buy', %s, %s, 0, %s, %s)",
        (Decimal("100.0"), Decimal(qty), trade_id, T0),
    )


def test_same_fill_twice_is_refused_after_002(empty_database_url: str) -> None:
    schema.upgrade(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        insert_fill(conn)
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert_fill(conn)
        # 1 and 1.000 are the same quantity to the constraint.
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert_fill(conn, qty="1.000")
        insert_fill(conn, trade_id="T1", qty="2")
        with pytest.raises(psycopg.errors.UniqueViolation):
            insert_fill(conn, trade_id="T1", qty="3")


def test_duplicates_are_accepted_before_002_and_reported_by_verify(
    empty_database_url: str,
) -> None:
    schema.upgrade(empty_database_url)
    schema.downgrade(empty_database_url, "001-add-multi-pair-support")
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        insert_fill(conn)
        insert_fill(conn)
    found = {p.check: p.count for p in verify(empty_database_url)}
    assert found["duplicate_fills"] == 1


def test_verify_finds_planted_orphan_and_pair_count_mismatch(empty_database_url: str) -> None:
    url = empty_database_url
    schema.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO sessions (id, status, mode, exchange, started_at, pairs, pair_count)"
            " VALUES ('good', 'ended', 'paper', 'paper', now(), '[\"BTC/USD\"]', 1),"
            "        ('bad-count', 'ended', 'paper', 'paper', now(), '[\"BTC/USD\"]', 3)"
        )
        conn.execute(
            "INSERT INTO orders (session_id, order_id, symbol, side, price, amount, status,"
            " created_at) VALUES ('good', 'o1', 'BTC/USD', 'buy', 1, 1, 'filled', now())"
        )
        conn.execute(
            "INSERT INTO fills (session_id, order_id, symbol, side, price, quantity, timestamp)"
            " VALUES ('good', 'o1', 'BTC/USD', 'buy', 1, 1, now()),"
            "        ('good', 'ghost', 'BTC/USD', 'buy', 1, 1, now())"
        )
    problems = {p.check: p for p in verify(url)}
    assert set(problems) == {"orphan_fills", "pair_count_mismatch"}
    assert problems["orphan_fills"].count == 1
    assert problems["orphan_fills"].examples == ("good/ghost",)
    assert problems["pair_count_mismatch"].examples == ("bad-count",)


def test_clean_database_verifies_clean(empty_database_url: str) -> None:
    schema.upgrade(empty_database_url)
    assert verify(empty_database_url) == []


def test_unreachable_database_is_store_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match="PostgreSQL"):
        schema.status("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=2")
