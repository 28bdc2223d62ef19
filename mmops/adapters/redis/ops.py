"""Service keys of settlement and migration: status, last run and completion markers.

Values: ``settlement:status:{S}`` is a hash (state, counts, errors as JSON, duration_ms,
finished_at); ``settlement:last_run:{S}`` and ``migration:completed:{S}`` are ISO 8601 times.
"""

from __future__ import annotations

from typing import Any, cast

from mmops.adapters.redis import keys
from mmops.adapters.redis.client import Redis, redis_errors


class OpsStore:
    def __init__(self, redis: Redis) -> None:
        self._r = redis

    @redis_errors
    async def settlement_status(self, session_id: str) -> dict[str, str]:
        return cast(dict[str, str], await self._r.hgetall(keys.settlement_status(session_id)))

    @redis_errors
    async def write_settlement_status(
        self, session_id: str, status: dict[str, str], finished_at: str
    ) -> None:
        mapping: dict[Any, Any] = status
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(keys.settlement_status(session_id))
            pipe.hset(keys.settlement_status(session_id), mapping=mapping)
            pipe.set(keys.settlement_last_run(session_id), finished_at)
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
