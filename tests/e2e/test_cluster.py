"""Every command on a Redis Cluster: a local 3-master cluster started by the tests
(tests/cluster.py), the CLI as processes, and the stores' basics through ``RedisCluster``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.exceptions as rex
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection

from mmops.adapters.clock import SimulatedClock
from mmops.adapters.paper.exchange import PaperExchange
from mmops.adapters.redis import keys
from mmops.adapters.redis.client import (
    Redis,
    _hiredis_packing,
    create_client,
    ping_nodes,
    redis_errors,
)
from mmops.adapters.redis.events import FeedCursorStore, FillEventStream
from mmops.adapters.redis.ingest import RedisIngestStream
from mmops.adapters.redis.locks import Attempts, SettlementLocks
from mmops.adapters.redis.ops import OpsStore
from mmops.adapters.redis.store import FillStore, OrderStore, PositionStore, SessionStore
from mmops.domain.exchange import OrderRequest
from mmops.domain.models import Fill, PendingTakeProfit, Session, Side
from mmops.domain.records import Fence
from mmops.errors import IntegrityError, LockNotAcquired, StoreUnavailable
from tests.conftest import SessionIds
from tests.e2e.test_serve import free_port, wait_for
from tests.paper_race import fund_at_once

pytestmark = pytest.mark.e2e

T0 = datetime(2026, 1, 5, 12, tzinfo=UTC)


@pytest.fixture
def cluster(cluster_redis: Redis) -> Redis:
    """The shared cluster client (tests/conftest.py), by a shorter name."""
    return cluster_redis


@pytest.fixture
def ids(cluster_session_ids: SessionIds) -> SessionIds:
    return cluster_session_ids


async def test_the_client_is_a_cluster_client_and_every_node_answers(cluster: Redis) -> None:
    assert isinstance(cluster, RedisCluster)
    await ping_nodes(cluster)
    assert len(cluster.get_primaries()) == 3


async def test_every_node_the_client_learns_of_packs_commands_with_hiredis(
    cluster: Redis,
) -> None:
    assert isinstance(cluster, RedisCluster)
    await ping_nodes(cluster)
    packing = _hiredis_packing(Connection)
    assert {node.connection_class for node in cluster.get_nodes()} == {packing}
    made = [c for node in cluster.get_nodes() for c in node._connections]
    assert made and all(isinstance(c, packing) for c in made)


async def test_a_command_spanning_slots_is_an_integrity_error(cluster: Redis) -> None:
    @redis_errors
    async def cross() -> None:
        async with cluster.pipeline(transaction=True) as pipe:
            pipe.set("a{one}", "1")
            pipe.set("b{two}", "2")
            await pipe.execute()

    with pytest.raises(IntegrityError, match="slots"):
        await cross()


async def test_store_locks_fence_and_registry_work_and_delete_all_leaves_nothing(
    cluster: Redis, ids: SessionIds
) -> None:
    sid = ids.new("cl")
    sessions, fills, positions = SessionStore(cluster), FillStore(cluster), PositionStore(cluster)
    await sessions.save(Session(sid, ("BTC/USD",), T0))
    assert sid in await sessions.ids()
    fill = Fill(sid, "B1", "BTC/USD", Side.BUY, Decimal("100"), Decimal("0.01"), Decimal("0"), T0)
    assert await fills.record(fill) is True
    assert await fills.record(fill) is False
    assert await fills.count(sid, "BTC/USD") == 1
    assert [p.position_id for p in (await positions.uncovered(sid, "BTC/USD")).items] == ["B1"]
    await OrderStore(cluster).save_many([])
    locks = SettlementLocks(cluster, ttl_seconds=5)
    async with locks.hold(sid) as lease:
        with pytest.raises(LockNotAcquired):
            async with locks.hold(sid):
                pass
        tokens = await Attempts(cluster, 5).acquire(sid, ["B1"])
        [position] = (await positions.uncovered(sid, "BTC/USD")).items
        pending = PendingTakeProfit(position.generation, "tp-1", Decimal("0.01"), T0)
        fenced = await positions.fence(sid, lease, [Fence(position, pending, tokens["B1"])])
        assert fenced == {"B1"}
    await OpsStore(cluster).mark_migration_completed(sid, T0.isoformat())
    registered = await cluster.smembers(keys.registry(sid))
    assert keys.fills(sid, "BTC/USD") in registered and keys.tp_attempt(sid, "B1") in registered
    assert await sessions.delete_all(sid) >= 6
    assert await sessions.expire_all(sid, 60) == 0
    for name in [*keys.fixed(sid), *registered]:
        assert not await cluster.exists(name)


async def test_streams_and_cursors_work_on_a_cluster(cluster: Redis) -> None:
    suffix = uuid.uuid4().hex[:8]
    events = FillEventStream(cluster, f"events:fills:{suffix}", claim_after_ms=60_000)
    assert await events.read("w1", block_ms=10, count=10) == []
    await cluster.xadd(f"events:fills:{suffix}", {"s": "s-1", "p": "BTC/USD"})
    [event] = await events.read("w1", block_ms=10, count=10)
    await events.ack([event.event_id])
    ingest = RedisIngestStream(cluster, f"mmops:ingest:{suffix}", claim_after_ms=60_000)
    await cluster.xadd(ingest.name, {"kind": "x"})
    [(message_id, fields)] = await ingest.read("c1", block_ms=10, count=10)
    assert fields == {"kind": "x"}
    await ingest.ack([message_id])
    cursors = FeedCursorStore(cluster)
    await cursors.set(f"acct-{suffix}", "42")
    assert await cursors.get(f"acct-{suffix}") == "42"
    await cluster.delete(f"events:fills:{suffix}", ingest.name, keys.feed_cursor(f"acct-{suffix}"))


async def test_the_paper_venue_transacts_and_resets_on_a_cluster(cluster: Redis) -> None:
    venue = PaperExchange(cluster, SimulatedClock(T0), venue=f"cl-{uuid.uuid4().hex[:8]}")
    try:
        await venue.fund("USD", Decimal("100000"))
        await venue.fund("BTC", Decimal("1"))
        ticker = (await venue.tickers(["BTC/USD"]))["BTC/USD"]
        price = (ticker.ask * Decimal("1.05")).quantize(Decimal("0.1"))
        [placed] = await venue.place_batch(
            [OrderRequest("BTC/USD", Side.SELL, Decimal("0.5"), price, "c-1")]
        )
        assert placed.order is not None, placed.error
        moved = await venue.amend("BTC/USD", placed.order.id, price + Decimal("1"))
        assert moved.price == price + Decimal("1")
        await venue.match()
        await venue.cancel("BTC/USD", placed.order.id)
        assert (await venue.balances())["BTC"].free == Decimal("1")
    finally:
        await venue.reset()
    assert not await cluster.exists(venue.keys.orders, venue.keys.balance("USD"))


# -- the CLI as processes ---------------------------------------------------------------------


@pytest.fixture
def env(
    redis_cluster_url: str, empty_database_url: str, tmp_path: Path
) -> Iterator[dict[str, str]]:
    yield {
        "MMOPS_DATABASE_URL": empty_database_url,
        "MMOPS_REDIS_URL": redis_cluster_url,
        "MMOPS_DATA_DIR": str(tmp_path),
        "MMOPS_PAPER_VENUE": f"cl-{uuid.uuid4().hex[:8]}",
        "MMOPS_LOG_LEVEL": "WARNING",
    }


def run(env: dict[str, str], *args: str) -> Any:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full.update(env)
    done = subprocess.run(
        [sys.executable, "-m", "mmops.entrypoints", *args],
        env=full, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"mmops {args} exited {done.returncode}: {done.stderr[-3000:]}"
    return done.stdout


def test_every_command_succeeds_on_a_cluster(env: dict[str, str], tmp_path: Path) -> None:
    sid = f"cl-sim-{uuid.uuid4().hex[:8]}"
    run(env, "db", "upgrade")
    sim = json.loads(run(env, "sim", "--simulated", "--hours", "0.5", "--pairs", "3",
                         "--session", sid, "--json"))  # fmt: skip
    assert sim
    run(env, "settle", "--session", sid, "--json")
    run(env, "migrate", "--session", sid, "--json")
    run(env, "verify-coverage", "--session", sid, "--json")
    status = json.loads(run(env, "status", "--json"))
    assert sid in {row["session"] for row in status["sessions"]}
    run(env, "demo", "--hours", "0.5", "--pairs", "3", "--seed", "5", "--json")

    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith("MMOPS_")}
    full.update(env, MMOPS_HTTP_PORT=str(port), MMOPS_SETTLEMENT_INTERVAL="1",
                MMOPS_MIGRATION_INTERVAL="2")  # fmt: skip
    with (tmp_path / "serve.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mmops.entrypoints", "serve"], env=full, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/readyz"
            assert wait_for(lambda: httpx.get(url).json()) == {"ready": True}
            time.sleep(3)  # the jobs have run (a job whose last run crashed would make it 503)
            response = httpx.get(url, timeout=10)
            assert response.status_code == 200, response.text
        finally:
            proc.terminate()
            assert proc.wait(30) == 0, (tmp_path / "serve.log").read_text()[-3000:]


async def test_a_plain_url_with_the_cluster_setting_is_a_cluster_client(
    redis_cluster_url: str,
) -> None:
    plain = redis_cluster_url.replace("redis+cluster://", "redis://")
    client = create_client(plain, cluster=True)
    try:
        assert isinstance(client, RedisCluster)
        await ping_nodes(client)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "error",
    [
        rex.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rex.TryAgainError("TRYAGAIN"),
        rex.MovedError("3999 127.0.0.1:6381"),
        rex.SlotNotCoveredError("slot not covered"),
        rex.MasterDownError("MASTERDOWN"),
    ],
)
async def test_cluster_outages_are_store_unavailable(error: Exception) -> None:
    @redis_errors
    async def fails() -> None:
        raise error

    with pytest.raises(StoreUnavailable, match="Redis"):
        await fails()


async def test_keys_written_before_the_registry_are_found_on_the_sessions_node(
    cluster: Redis, ids: SessionIds
) -> None:
    """A session without a complete registry (saved by older code) is still deleted whole:
    the SCAN fallback reads the one node that holds the session's slot."""
    sid = ids.new("legacy")
    legacy = [keys.session(sid), keys.orders(sid, "BTC/USD"), keys.position(sid, "B9")]
    for name in legacy:
        await cluster.hset(name, "x", "1")
    assert await SessionStore(cluster).delete_all(sid) == len(legacy)
    assert not await cluster.exists(*legacy)


async def test_a_job_whose_last_run_crashed_makes_readiness_say_so_until_it_runs_clean() -> None:
    from mmops.entrypoints.serve import Daemon

    class Alerts:
        async def update(self, *_: object) -> None:
            pass

    daemon = Daemon.__new__(Daemon)
    daemon.stopping, daemon.running, daemon.crashed = False, set(), {}
    daemon.alerts = Alerts()  # type: ignore[assignment]
    outcome: list[Exception] = [RuntimeError("boom")]

    async def job() -> None:
        if outcome:
            raise outcome.pop()

    await daemon._guarded("settlement", job)()
    assert daemon.crashed == {"settlement": "RuntimeError: boom"}
    await daemon._guarded("settlement", job)()
    assert daemon.crashed == {}


async def test_the_venues_watch_multi_loses_no_update_between_cluster_clients(
    redis_cluster_url: str,
) -> None:
    assert await fund_at_once(redis_cluster_url, handles=4, times=25) == Decimal(100)
