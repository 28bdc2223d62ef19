"""The ingest stream on real Redis and PostgreSQL: messages applied once, bad ones quarantined
once, a crashed consumer's messages claimed by another, and migration verifying the result."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from mmops.adapters.redis import keys
from mmops.adapters.redis.ingest import RedisIngestStream
from mmops.bootstrap import build_ingest, build_migration
from mmops.services.ingest import IngestService
from tests.integration.world import World, world

pytestmark = pytest.mark.integration


@dataclass
class Feed:
    """A stream of the test's own, the market maker writing to it, and consumers reading it."""

    w: World
    stream: str

    async def send(self, **fields: str) -> str:
        return str(await self.w.rt.redis.xadd(self.stream, fields))  # type: ignore[arg-type]

    def consumer(self, claim_after_ms: int = 100) -> IngestService:
        rt = self.w.rt
        return IngestService(
            stream=RedisIngestStream(rt.redis, self.stream, claim_after_ms=claim_after_ms),
            sessions=rt.registry,
            live=rt.sessions,
            orders=rt.orders,
            fills=rt.fills,
            rejects=rt.warehouse,
            clock=rt.clock,
        )

    def session(self) -> str:
        sid = f"ing-{uuid.uuid4().hex[:12]}"
        self.w.session_ids.append(sid)
        return sid

    async def rows(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        async with self.w.rt.pool.connection() as conn:
            return list(await (await conn.execute(sql, args)).fetchall())


@pytest.fixture
async def feed(redis_url: str, database_url: str) -> AsyncIterator[Feed]:
    stream = f"test:ingest:{uuid.uuid4().hex[:10]}"
    async with world(redis_url, database_url, ingest_stream=stream) as w:
        try:
            yield Feed(w, stream)
        finally:
            await w.rt.redis.delete(stream)


async def trade(feed: Feed, sid: str, pairs: Sequence[str], n: int) -> list[dict[str, str]]:
    """Start a session and send per pair n filled buys, each in two fills with trade ids."""
    await feed.send(type="session_start", session=sid, pairs=",".join(pairs), capital="10000")
    fills = []
    for pair in pairs:
        base = pair.split("/")[0]
        for i in range(n):
            oid = f"{base}-b{i}"
            await feed.send(
                type="order", session=sid, pair=pair, order_id=oid, side="buy", price="100.5",
                amount="2", filled="2", status="filled", created_at="2026-11-26T08:00:00+00:00",
            )  # fmt: skip
            for part, qty in enumerate(("1.5", "0.5")):
                fill = {
                    "type": "fill", "session": sid, "pair": pair, "order_id": oid,
                    "side": "buy", "price": "100.5", "quantity": qty, "fee": "0.1",
                    "trade_id": f"T-{oid}-{part}", "time": f"2026-11-26T08:00:0{part}Z",
                }  # fmt: skip
                await feed.send(**fill)
                fills.append(fill)
    return fills


async def test_a_session_its_orders_and_fills_are_applied_and_a_replay_recorded_once(
    feed: Feed,
) -> None:
    sid = feed.session()
    fills = await trade(feed, sid, ["BTC/USD", "ETH/USD"], 2)
    for fill in fills[:3]:  # the market maker reconnected and sent these again
        await feed.send(**fill)
    counts = await feed.consumer().run_once("c1")
    assert (counts.applied, counts.duplicates, counts.quarantined) == (1 + 4 + 8, 3, 0)
    assert await feed.rows("SELECT pairs, mode FROM sessions WHERE id = %s", sid) == [
        (["BTC/USD", "ETH/USD"], "external")
    ]
    assert await feed.w.rt.fills.count(sid, "BTC/USD") == 4
    assert await feed.w.rt.orders.count(sid, "ETH/USD") == 2
    uncovered = await feed.w.rt.positions.uncovered_ids(sid, "BTC/USD")
    assert sorted(uncovered) == ["BTC-b0", "BTC-b1"]  # positions for settlement to cover
    pending = await feed.w.rt.redis.xpending(feed.stream, keys.INGEST_GROUP)
    assert pending["pending"] == 0


async def test_a_malformed_message_is_quarantined_once_even_when_redelivered(feed: Feed) -> None:
    sid = feed.session()
    await feed.send(type="session_start", session=sid, pairs="BTC/USD")
    bad = await feed.send(
        type="fill", session=sid, pair="BTC/USD", order_id="o1", side="buy", price="NaN",
        quantity="1", time="2026-11-26T08:00:00Z",
    )  # fmt: skip
    crashing = feed.consumer()

    async def crash(message_ids: Sequence[str]) -> None:
        raise RuntimeError("killed before XACK")

    crashing._stream.ack = crash  # type: ignore[attr-defined, method-assign]
    with pytest.raises(RuntimeError):
        await crashing.run_once("c1")  # quarantined, then died before acknowledging
    await asyncio.sleep(0.15)
    counts = await feed.consumer().run_once("c2")  # claims both after 100 ms idle
    assert (counts.duplicates, counts.quarantined) == (1, 1)
    rows = await feed.rows(
        "SELECT message_id, session_id, raw->>'price', reason FROM ingest_rejects"
        " WHERE stream = %s",
        feed.stream,
    )
    assert rows == [(bad, sid, "NaN", "price: not a decimal number: 'NaN'")]
    pending = await feed.w.rt.redis.xpending(feed.stream, keys.INGEST_GROUP)
    assert pending["pending"] == 0


async def test_a_message_read_by_a_consumer_that_crashed_is_applied_by_another(
    feed: Feed,
) -> None:
    sid = feed.session()
    await feed.send(type="session_start", session=sid, pairs="BTC/USD")
    redis = feed.w.rt.redis
    await RedisIngestStream(redis, feed.stream).ensure_group()
    read = await redis.xreadgroup(keys.INGEST_GROUP, "dead", {feed.stream: ">"}, count=10)
    assert len(read[0][1]) == 1  # read, never acknowledged: the consumer died
    survivor = feed.consumer(claim_after_ms=100)
    assert (await survivor.run_once("c2", block_ms=10)).total == 0  # not idle long enough yet
    await asyncio.sleep(0.15)
    counts = await survivor.run_once("c2", block_ms=10)
    assert counts.applied == 1
    assert await feed.rows("SELECT id FROM sessions WHERE id = %s", sid) == [(sid,)]


async def test_migration_verifies_every_fill_of_an_ingested_session(feed: Feed) -> None:
    sid = feed.session()
    fills = await trade(feed, sid, ["SOL/USD", "DOT/USD"], 3)
    await feed.send(**fills[0])
    await feed.send(type="session_end", session=sid)
    consumer = build_ingest(feed.w.rt)  # the configured stream: this test's own
    while (await consumer.run_once("c1", block_ms=10)).total:
        pass
    assert consumer.totals.by_type == {"session_start": 1, "order": 6, "fill": 13, "session_end": 1}

    [migrated] = await build_migration(feed.w.rt).run(sid)
    assert migrated.state == "verified", migrated.to_dict()
    assert migrated.fills_inserted == len(fills) == 12
    assert migrated.orders == 6


async def test_a_pending_message_deleted_from_the_stream_is_acknowledged_and_skipped(
    feed: Feed,
) -> None:
    redis = feed.w.rt.redis
    gone = await feed.send(type="session_start", session=feed.session(), pairs="BTC/USD")
    await RedisIngestStream(redis, feed.stream).ensure_group()
    await redis.xreadgroup(keys.INGEST_GROUP, "c1", {feed.stream: ">"}, count=10)
    await redis.xdel(feed.stream, gone)  # trimmed away before it was applied
    counts = await feed.consumer().run_once("c1", block_ms=10)
    assert counts.total == 0
    pending = await redis.xpending(feed.stream, keys.INGEST_GROUP)
    assert pending["pending"] == 0
