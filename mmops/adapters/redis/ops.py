"""Service keys of settlement and migration: status, last run and completion markers.

Values: ``settlement:status:{S}`` is a hash (state, counts, errors as JSON, duration_ms,
finished_at, worker, dry_run, stop-loss figures: ``codec.settlement_status_to_fields``);
``settlement:last_run:{S}`` and ``migration:completed:{S}`` are ISO 8601 times.
"""

from __future__ import annotations

from typing import Any, cast

from mmops.adapters.redis import codec, keys
from mmops.adapters.redis.client import Redis, redis_errors
from mmops.domain.records import SettlementStatus


class OpsStore:
    def __init__(self, redis: Redis) -> None:
        self._r = redis

    @redis_errors
    async def settlement_status(self, session_id: str) -> SettlementStatus | None:
        """The session's last settlement status, or None before its first run. Raises
        BadRecordError if it does not parse."""
        key = keys.settlement_status(session_id)
        fields = cast(dict[str, str], await self._r.hgetall(key))
        if not fields:
            return None
        return codec.decode(key, fields, codec.settlement_status_from_fields)

    @redis_errors
    async def write_settlement_status(self, session_id: str, status: SettlementStatus) -> None:
        """Replace the status hash and set the last-run time (its ``finished_at``), in one MULTI."""
        mapping: dict[Any, Any] = codec.settlement_status_to_fields(status)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.settlement_status(session_id))
            pipe.hset(keys.settlement_status(session_id), mapping=mapping)
            pipe.set(keys.settlement_last_run(session_id), mapping["finished_at"])
            await pipe.execute()

    @redis_errors
    async def settlement_last_run(self, session_id: str) -> str | None:
        value = await self._r.get(keys.settlement_last_run(session_id))
        return None if value is None else str(value)

    @redis_errors
    async def migration_completed(self, session_id: str) -> str | None:
        value = await self._r.get(keys.migration_completed(session_id))
        return None if value is None else str(value)

    @redis_errors
    async def mark_migration_completed(self, session_id: str, at: str) -> None:
        await self._r.set(keys.migration_completed(session_id), at)
