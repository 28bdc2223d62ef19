"""The ports services depend on: short ``typing.Protocol``s, each with a real implementation
in ``mmops.adapters`` (and, for the exchange, a paper one beside the live one)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from mmops.domain.models import Session, SessionStatus


class Clock(Protocol):
    """Where services read the time; the simulator passes a simulated one."""

    def now(self) -> datetime: ...


class LiveSessions(Protocol):
    """The live state of sessions (Redis)."""

    async def save(self, s: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def set_status(self, session_id: str, status: SessionStatus) -> None: ...
    async def end(self, session_id: str, ended_at: datetime) -> None: ...


class SessionRecords(Protocol):
    """The registry of sessions (PostgreSQL), which settlement and migration discover from."""

    async def upsert(self, s: Session) -> None: ...
    async def get(self, session_id: str) -> Session | None: ...
    async def set_status(
        self, session_id: str, status: SessionStatus, ended_at: datetime | None = None
    ) -> None: ...
    async def recent(self, hours_back: int, limit: int, now: datetime) -> list[Session]: ...
