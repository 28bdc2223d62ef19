"""The fill events stream and the fill feed's cursors (Redis).

``events:fills`` (``MMOPS_FILL_EVENTS_STREAM``) is a Redis Stream: ``FillStore.record``
appends ``s`` (session) and ``p`` (pair) for each new buy fill, and every worker's settle
trigger reads it through the consumer group ``settle``, so each event is handled by one
worker. An event read and not acknowledged
(its worker died) is claimed by another once it has been idle ``claim_after_ms``. The stream
is capped (``MAXLEN ~``): an event is a hint to settle early; the scheduled run is the net.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import redis.exceptions as rex

from mmops.adapters.redis import keys
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.domain.models import check_session_id, check_symbol
from mmops.domain.records import FillEvent
from mmops.errors import InvalidIdentifier
from mmops.logs import get_logger

log = get_logger("mmops.events")

MAX_EVENTS = 100_000  # the stream's approximate cap


@redis_errors
async def publish_fill(redis: Redis, stream: str, session_id: str, symbol: str) -> None:
    """Announce a new buy fill of (session, pair) on ``stream``."""
    await redis.xadd(stream, {"s": session_id, "p": symbol}, maxlen=MAX_EVENTS, approximate=True)


class FillEventStream:
    """``FillEvents`` on a Redis Stream with a consumer group."""

    def __init__(
        self, redis: Redis, stream: str = keys.FILL_EVENTS, *, claim_after_ms: int = 30_000
    ) -> None:
        self._r = redis
        self._stream = stream
        self._claim_after_ms = claim_after_ms
        self._group_ready = False

    @redis_errors
    async def read(self, consumer: str, block_ms: int, count: int) -> list[FillEvent]:
        """Events for this consumer: first those another consumer left idle too long, then new
        ones (waiting up to ``block_ms``). A malformed entry is acknowledged and dropped with a
        log line: it names no session to settle. A stream or group deleted meanwhile is made
        again at the next read."""
        try:
            return await self._read(consumer, block_ms, count)
        except rex.ResponseError as e:
            if "NOGROUP" not in str(e) and "UNBLOCKED" not in str(e):
                raise
            log.warning("events.group_gone", stream=self._stream, error=str(e))
            self._group_ready = False
            return []

    async def _read(self, consumer: str, block_ms: int, count: int) -> list[FillEvent]:
        await self._ensure_group()
        # [next id, claimed entries] (Redis 6.2), then a list of deleted ids too (7.0 on).
        claim: Any = await self._r.xautoclaim(
            self._stream, keys.FILL_EVENTS_GROUP, consumer,
            min_idle_time=self._claim_after_ms, start_id="0-0", count=count,
        )  # fmt: skip
        claimed: list[Any] = claim[1]
        entries: list[tuple[str, dict[str, str]]] = [(i, f) for i, f in claimed if f]
        if not entries:
            reply = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]] | None,
                await self._r.xreadgroup(
                    keys.FILL_EVENTS_GROUP, consumer, {self._stream: ">"},
                    count=count, block=block_ms,
                ),
            )  # fmt: skip
            for _, stream_entries in reply or []:
                entries.extend(stream_entries)
        return await self._decoded(entries)

    @redis_errors
    async def ack(self, event_ids: Sequence[str]) -> None:
        if event_ids:
            await self._r.xack(self._stream, keys.FILL_EVENTS_GROUP, *event_ids)

    async def _decoded(self, entries: list[tuple[str, dict[str, str]]]) -> list[FillEvent]:
        events: list[FillEvent] = []
        bad: list[str] = []
        for event_id, fields in entries:
            try:
                session_id = check_session_id(fields.get("s", ""))
                symbol = check_symbol(fields.get("p", ""))
            except (ValueError, InvalidIdentifier) as e:
                log.error("events.bad_entry", event=event_id, error=str(e))
                bad.append(event_id)
                continue
            events.append(FillEvent(event_id, session_id, symbol))
        await self.ack(bad)
        return events

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From "$": a new group settles fills from now on; earlier ones are the schedule's.
            await self._r.xgroup_create(self._stream, keys.FILL_EVENTS_GROUP, id="$", mkstream=True)
        except rex.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True


class FeedCursorStore:
    """``FeedCursors``: ``feed:cursor:<account>``."""

    def __init__(self, redis: Redis) -> None:
        self._r = redis

    @redis_errors
    async def get(self, account: str) -> str | None:
        value = await self._r.get(keys.feed_cursor(account))
        return None if value is None else str(value)

    @redis_errors
    async def set(self, account: str, cursor: str) -> None:
        await self._r.set(keys.feed_cursor(account), cursor)
