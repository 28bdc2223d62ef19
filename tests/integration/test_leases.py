"""Work leases on real PostgreSQL: concurrent claimers split the sessions, each due session is
claimed once per round, a lease not marked done is taken over after its TTL, the
longest-waiting sessions go first, and stale sessions are flagged."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from mmops.adapters.postgres import schema
from mmops.adapters.postgres.leases import PostgresWorkLeases
from mmops.adapters.postgres.pool import Pool, create_pool, open_pool
from mmops.domain.records import WorkItem, WorkKind

pytestmark = pytest.mark.integration

SETTLE = WorkKind.SETTLEMENT
ROUND = timedelta(seconds=30)
TTL = timedelta(seconds=30)
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
async def db(empty_database_url: str) -> AsyncIterator[tuple[str, Pool]]:
    schema.upgrade(empty_database_url)
    pool = create_pool(empty_database_url, max_size=8)
    await open_pool(pool)
    try:
        yield empty_database_url, pool
    finally:
        await pool.close()


def add_sessions(url: str, n: int, started: timedelta = timedelta(0)) -> list[str]:
    ids = [f"s{i:03}" for i in range(n)]
    with psycopg.connect(url) as conn:
        for sid in ids:
            conn.execute(
                "INSERT INTO sessions (id, status, mode, exchange, started_at)"
                " VALUES (%s, 'active', 'paper', 'paper', now() - %s)",
                (sid, started),
            )
    return ids


async def round_of(leases: PostgresWorkLeases, workers: int, batch: int = 3) -> dict[str, str]:
    """``workers`` claimers at once, each claiming and finishing until none is due; who did
    what (a session claimed twice fails the test)."""
    done: dict[str, str] = {}

    async def work(name: str) -> None:
        while claimed := await leases.claim(SETTLE, name, batch, TTL, ROUND, since=LONG_AGO):
            for item in claimed:
                sid = item.session_id
                assert sid not in done, f"{sid} claimed by {done[sid]} and {name}"
                done[sid] = name
                await asyncio.sleep(0.001)
                assert await leases.done(SETTLE, item, name)

    await leases.discover(SETTLE, LONG_AGO)
    await asyncio.gather(*(work(f"w{i}") for i in range(workers)))
    return done


@pytest.mark.parametrize("workers", [2, 4])
async def test_concurrent_claimers_split_the_sessions_each_once_per_round(
    db: tuple[str, Pool], workers: int
) -> None:
    url, pool = db
    ids = add_sessions(url, 40)
    leases = PostgresWorkLeases(pool)

    done = await round_of(leases, workers)

    assert sorted(done) == ids
    assert len(set(done.values())) == workers  # everyone got a share
    assert await round_of(leases, workers) == {}  # the round is done: nothing due again


async def test_a_lease_not_marked_done_is_taken_over_after_its_ttl(db: tuple[str, Pool]) -> None:
    url, pool = db
    add_sessions(url, 1)
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    short = timedelta(milliseconds=300)

    assert await leases.claim(SETTLE, "dead", 5, short, ROUND, since=LONG_AGO) == [WorkItem("s000")]
    assert await leases.claim(SETTLE, "other", 5, TTL, ROUND, since=LONG_AGO) == []
    await asyncio.sleep(0.4)
    assert await leases.claim(SETTLE, "other", 5, TTL, ROUND, since=LONG_AGO) == [WorkItem("s000")]
    assert not await leases.done(SETTLE, WorkItem("s000"), "dead")  # the lease is no longer its own
    assert await leases.done(SETTLE, WorkItem("s000"), "other")


async def test_a_released_lease_is_due_again_at_once(db: tuple[str, Pool]) -> None:
    url, pool = db
    add_sessions(url, 1)
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    assert await leases.claim(SETTLE, "a", 5, TTL, ROUND, since=LONG_AGO) == [WorkItem("s000")]
    assert await leases.release(SETTLE, WorkItem("s000"), "a")
    assert await leases.claim(SETTLE, "b", 5, TTL, ROUND, since=LONG_AGO) == [WorkItem("s000")]


async def test_the_longest_waiting_sessions_are_claimed_first(db: tuple[str, Pool]) -> None:
    url, pool = db
    ids = add_sessions(url, 10)
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    with psycopg.connect(url) as conn:  # done 10, 9, ... 1 minutes ago: s009 waited longest
        for i, sid in enumerate(ids):
            conn.execute(
                "UPDATE work_leases SET last_done = now() - make_interval(mins => %s)"
                " WHERE session_id = %s",
                (i + 1, sid),
            )
        conn.execute("UPDATE work_leases SET last_done = NULL WHERE session_id = 's004'")

    first = await leases.claim(SETTLE, "w", 4, TTL, ROUND, since=LONG_AGO)

    assert [i.session_id for i in first] == [
        "s004",
        "s009",
        "s008",
        "s007",
    ]  # never done first, then the oldest


async def test_a_session_no_longer_recent_is_not_claimed(db: tuple[str, Pool]) -> None:
    url, pool = db
    add_sessions(url, 1)
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE sessions SET status = 'ended', started_at = now() - interval '3 days',"
            " ended_at = now() - interval '2 days'"
        )
    since = datetime.now(UTC) - timedelta(hours=24)
    assert await leases.claim(SETTLE, "w", 5, TTL, ROUND, since=since) == []


async def test_a_silent_session_is_flagged_stale_once_and_settled_less_often(
    db: tuple[str, Pool],
) -> None:
    url, pool = db
    quiet, busy = add_sessions(url, 2, started=timedelta(hours=8))
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO fills (session_id, order_id, symbol, side, price, quantity, timestamp)"
            " VALUES (%s, 'o1', 'BTC/USD', 'buy', 1, 1, now() - interval '5 minutes')",
            (busy,),
        )
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    after = timedelta(hours=6)

    assert await leases.mark_stale(after) == ([quiet], [])
    assert await leases.mark_stale(after) == ([], [])  # flagged (and logged) once
    assert await leases.stale([quiet, busy]) == {quiet}

    with psycopg.connect(url) as conn:  # both done a round and a half ago
        conn.execute("UPDATE work_leases SET last_done = now() - interval '45 seconds'")
    claimed = await leases.claim(
        SETTLE, "w", 5, TTL, ROUND, since=LONG_AGO, stale_due_age=ROUND * 10
    )
    assert claimed == [WorkItem(busy)]

    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE sessions SET status = 'ended', ended_at = now() WHERE id = %s", (quiet,)
        )
    assert await leases.mark_stale(after) == ([], [quiet])


async def test_migration_holds_split_pending_sessions_and_a_failed_one_stays_due(
    db: tuple[str, Pool],
) -> None:
    url, pool = db
    ids = add_sessions(url, 12)
    leases = PostgresWorkLeases(pool)
    started = await leases.discover(WorkKind.MIGRATION, LONG_AGO)
    taken: Counter[str] = Counter()

    async def take(name: str) -> None:
        while True:
            async with leases.hold(WorkKind.MIGRATION, name, started) as sid:
                if sid is None:
                    return
                taken[sid] += 1
                await asyncio.sleep(0.005)

    with pytest.raises(RuntimeError):
        async with leases.hold(WorkKind.MIGRATION, "crash", started) as sid:
            assert sid == ids[0]
            raise RuntimeError("killed")
    await asyncio.gather(*(take(f"w{i}") for i in range(4)))

    assert taken == Counter(dict.fromkeys(ids, 1))


def set_pairs(url: str, sid: str, pairs: list[str]) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE sessions SET pairs = %s::jsonb, pair_count = %s WHERE id = %s",
            (json.dumps(pairs), len(pairs), sid),
        )


async def test_a_big_session_is_claimed_in_parts_each_once_per_round(
    db: tuple[str, Pool],
) -> None:
    url, pool = db
    big, small = add_sessions(url, 2)
    set_pairs(url, big, [f"A{i}/USD" for i in range(5)])
    set_pairs(url, small, ["BTC/USD"])
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)

    assert await leases.splittable(LONG_AGO, 3) == {big: tuple(f"A{i}/USD" for i in range(5))}
    groups = {"g0": ["A0/USD", "A1/USD", "A2/USD"], "g1": ["A3/USD", "A4/USD"]}
    await leases.set_parts(SETTLE, big, groups)
    await leases.set_parts(SETTLE, big, groups)  # again: nothing more

    # The default batch: one claim takes at most one part of a session, so the second
    # worker gets the big session's next part while the first settles its first.
    first = await leases.claim(SETTLE, "w0", 10, TTL, ROUND, since=LONG_AGO)
    second = await leases.claim(SETTLE, "w1", 10, TTL, ROUND, since=LONG_AGO)
    third = await leases.claim(SETTLE, "w0", 10, TTL, ROUND, since=LONG_AGO)
    assert sorted(i.session_id for i in first) == sorted([big, small])
    assert [i.session_id for i in second] == [big] and [i.session_id for i in third] == [big]
    assert await leases.claim(SETTLE, "w1", 10, TTL, ROUND, since=LONG_AGO) == []
    claimed_items = [*first, *second, *third]
    by_part = {(i.session_id, i.part): i for i in claimed_items}
    assert by_part[(big, "")].groups == ("g0", "g1")  # the part '' knows the groups
    assert by_part[(big, "g1")].pairs == ("A3/USD", "A4/USD")  # a group, its pairs
    assert by_part[(small, "")].groups == ()
    # Fewer pairs: its group leases go (and it is splittable once more, to drop them).
    set_pairs(url, big, ["A0/USD"])
    assert await leases.splittable(LONG_AGO, 3) == {big: ("A0/USD",)}
    await leases.set_parts(SETTLE, big, {})
    assert await leases.splittable(LONG_AGO, 3) == {}
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT part FROM work_leases WHERE session_id = %s", (big,))
        assert [r[0] for r in rows] == [""]


async def test_splitting_again_does_not_wait_on_a_part_it_leaves_as_it_was(
    db: tuple[str, Pool],
) -> None:
    """Every worker splits at the start of its run. A part whose pairs are unchanged is not
    waited on, nor locked (a claim meanwhile skips locked rows: its worker could take the parts
    for done); one whose pairs changed is updated, a new one inserted."""
    url, pool = db
    [big] = add_sessions(url, 1)
    set_pairs(url, big, [f"A{i}/USD" for i in range(5)])
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    groups = {"g0": ["A0/USD", "A1/USD", "A2/USD"], "g1": ["A3/USD", "A4/USD"]}
    await leases.set_parts(SETTLE, big, groups)
    regrouped = {"g0": groups["g0"], "g1": ["A3/USD"], "g2": ["A4/USD"]}
    with psycopg.connect(url) as holder:  # holds g0's row, as a claim does for a moment
        holder.execute(
            "SELECT 1 FROM work_leases WHERE session_id = %s AND part = 'g0' FOR UPDATE", (big,)
        )
        await asyncio.wait_for(leases.set_parts(SETTLE, big, groups), 5)
        await asyncio.wait_for(leases.set_parts(SETTLE, big, regrouped), 5)
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT part, pairs FROM work_leases WHERE session_id = %s AND part <> ''"
            " ORDER BY part",
            (big,),
        ).fetchall()
    assert rows == [(name, pairs) for name, pairs in regrouped.items()]


async def test_a_stale_flag_covers_every_part_and_is_reported_once(db: tuple[str, Pool]) -> None:
    url, pool = db
    (sid,) = add_sessions(url, 1, started=timedelta(hours=8))
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    await leases.set_parts(SETTLE, sid, {"g0": ["A/USD"], "g1": ["B/USD"]})

    assert await leases.mark_stale(timedelta(hours=6)) == ([sid], [])
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT count(*) FROM work_leases WHERE stale_since IS NOT NULL")
        assert rows.fetchone() == (3,)


async def test_a_lease_is_renewed_only_by_its_holder(db: tuple[str, Pool]) -> None:
    url, pool = db
    add_sessions(url, 1)
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    [item] = await leases.claim(SETTLE, "w0", 5, timedelta(milliseconds=200), ROUND,
                                since=LONG_AGO)  # fmt: skip
    assert await leases.renew(SETTLE, item, "w0", TTL)  # ours: now for 30 s
    assert not await leases.renew(SETTLE, item, "w1", TTL)
    await asyncio.sleep(0.3)
    assert await leases.claim(SETTLE, "w1", 5, TTL, ROUND, since=LONG_AGO) == []  # renewed


async def test_008_rolls_back_with_group_leases_present(db: tuple[str, Pool]) -> None:
    url, pool = db
    (sid,) = add_sessions(url, 1)
    leases = PostgresWorkLeases(pool)
    await leases.discover(SETTLE, LONG_AGO)
    await leases.set_parts(SETTLE, sid, {"g0": ["A/USD"], "g1": ["B/USD"]})
    await pool.close()

    schema.downgrade(url, "007-analytics")
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT kind, session_id FROM work_leases").fetchall()
        assert rows == [("settlement", sid)]
        key = conn.execute(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'work_leases_pkey'"
        ).fetchone()
        assert key == ("PRIMARY KEY (kind, session_id)",)
    assert "008-work-lease-parts" in schema.upgrade(url)
