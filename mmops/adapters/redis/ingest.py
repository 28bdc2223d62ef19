"""The ingest stream (``mmops:ingest``) read by the consumer group ``mmops`` (docs/INGEST.md).

A consumer reads, in this order: its own pending messages (delivered to it before and not
acknowledged: a pass that stopped on a store outage, or a restart under the same name), then
messages another consumer has left unacknowledged for ``claim_after_ms`` (XAUTOCLAIM: that
consumer crashed or stalled), then new ones (XREADGROUP ``>`` with BLOCK). A message stays in
the group's pending list until XACK, so nothing read is lost to a crash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.exceptions as rex

from mmops.adapters.redis import keys
from mmops.adapters.redis.client import Redis, redis_errors

Entry = tuple[str, dict[str, str]]  # a message: its id (``1732608000000-0``) and its fields


class RedisIngestStream:
    """``IngestStream`` (mmops.services.ingest) over a Redis Stream and its consumer group."""

    def __init__(
        self,
        redis: Redis,
        stream: str = keys.INGEST_STREAM,
        group: str = keys.INGEST_GROUP,
        claim_after_ms: int = 30_000,
    ) -> None:
        self._r = redis
        self.name = stream
        self.group = group
        self._claim_after_ms = claim_after_ms
        self._group_ready = False

    @redis_errors
    async def ensure_group(self) -> None:
        """Create the stream and its group if missing (XGROUP CREATE MKSTREAM), reading from
        the stream's first entry, so messages written before any consumer started are read."""
        try:
            await self._r.xgroup_create(self.name, self.group, id="0", mkstream=True)
        except rex.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        self._group_ready = True

    @redis_errors
    async def read(self, consumer: str, block_ms: int, count: int) -> list[Entry]:
        """Up to ``count`` messages: this consumer's pending ones, else ones idle too long in
        another consumer's pending list, else new ones (waiting up to ``block_ms``)."""
        if not self._group_ready:
            await self.ensure_group()
        try:
            return await self._read(consumer, block_ms, count)
        except rex.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            self._group_ready = False  # the stream was deleted: create it again next pass
            return []

    async def _read(self, consumer: str, block_ms: int, count: int) -> list[Entry]:
        own: Any = await self._r.xreadgroup(self.group, consumer, {self.name: "0"}, count=count)
        if messages := await self._present(own[0][1] if own else []):
            return messages
        # XAUTOCLAIM drops entries whose message was deleted from the pending list itself.
        claim: Any = await self._r.xautoclaim(
            self.name, self.group, consumer, self._claim_after_ms, start_id="0-0", count=count
        )
        if messages := await self._present(claim[1]):
            return messages
        new: Any = await self._r.xreadgroup(
            self.group, consumer, {self.name: ">"}, count=count, block=block_ms
        )
        return await self._present(new[0][1] if new else [])

    async def _present(self, entries: list[Any]) -> list[Entry]:
        """The entries that still have their message. A pending entry whose message was
        deleted (XDEL, trimming) comes back without fields: it is acknowledged, so it leaves
        the pending list, since there is nothing left to apply."""
        gone = [message_id for message_id, fields in entries if not fields]
        if gone:
            await self._r.xack(self.name, self.group, *gone)
        return [(message_id, dict(fields)) for message_id, fields in entries if fields]

    @redis_errors
    async def ack(self, message_ids: Sequence[str]) -> None:
        if message_ids:
            await self._r.xack(self.name, self.group, *message_ids)
