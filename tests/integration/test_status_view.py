"""The status view (``mmops status``, ``GET /status``): counts are numbers, and one session's
corrupt settlement status is reported as unreadable without hiding the other sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from mmops.adapters.redis import keys
from mmops.entrypoints.status_view import collect_status
from tests.integration.world import World, world

pytestmark = pytest.mark.integration


@pytest.fixture
async def w(redis_url: str, database_url: str) -> AsyncIterator[World]:
    async with world(redis_url, database_url) as w:
        yield w


async def test_a_corrupt_status_is_reported_and_the_other_sessions_still_shown(w: World) -> None:
    good = await w.start_session(["BTC/USD"])
    bad = await w.start_session(["ETH/USD"])
    await w.seed_positions(good, "BTC/USD", [10])
    [result] = await w.settlement().run(good)
    assert result.ok
    await w.rt.redis.hset(keys.settlement_status(bad), mapping={"state": "??", "placed": "x"})

    rows = {row["session"]: row for row in await collect_status(w.rt)}

    shown = rows[good]["last_settlement"]
    assert shown["state"] == "ok" and shown["unreadable"] is None
    assert shown["placed"] == 1 and type(shown["skipped"]) is int
    broken = rows[bad]["last_settlement"]
    assert broken["state"] is None
    assert keys.settlement_status(bad) in broken["unreadable"]
