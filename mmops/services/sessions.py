"""The session registry: a session's live state in Redis and its row in PostgreSQL."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from mmops.domain.models import Session, SessionStatus
from mmops.ports import LiveSessions, SessionRecords


class SessionRegistry:
    """Start, end and discover sessions, keeping Redis and PostgreSQL in step.

    Start writes PostgreSQL first: a row without Redis state is harmless (settlement finds no
    positions), while Redis state without a row would be trading that settlement never sees.
    """

    def __init__(self, live: LiveSessions, records: SessionRecords) -> None:
        self._live = live
        self._records = records

    async def start(self, session: Session) -> Session:
        active = dataclasses.replace(session, status=SessionStatus.ACTIVE, ended_at=None)
        await self._records.upsert(active)
        await self._live.save(active)
        return active

    async def end(self, session_id: str, ended_at: datetime) -> None:
        await self._live.end(session_id, ended_at)
        await self._records.set_status(session_id, SessionStatus.ENDED, ended_at)

    async def set_status(self, session_id: str, status: SessionStatus) -> None:
        """Halt or resume a session (the stop-loss halts; the trading loop obeys)."""
        await self._live.set_status(session_id, status)
        await self._records.set_status(session_id, status)

    async def get(self, session_id: str) -> Session | None:
        """The session as registered in PostgreSQL (what settlement and migration go by)."""
        return await self._records.get(session_id)

    async def recent_sessions(self, hours_back: int, limit: int, now: datetime) -> list[Session]:
        return await self._records.recent(hours_back, limit, now)
