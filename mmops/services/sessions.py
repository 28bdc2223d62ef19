"""The session registry: a session's live state in Redis and its row in PostgreSQL."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta

from mmops.domain.models import Session, SessionStatus
from mmops.ports import LiveSessions, SessionRecords, WorkLeases


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


@dataclass(frozen=True, slots=True)
class WorkSharing:
    """How a worker takes its share of the sessions (docs/ARCHITECTURE.md, "Work sharing").

    A round is ``interval``: a session is due when it was last done more than
    ``DUE_FRACTION * interval`` ago (so every running session is done once per round,
    by one worker, whatever the number of workers or sessions). ``batch`` sessions are claimed
    at a time, each leased for ``ttl`` (a worker that dies keeps them that long). A stale
    session (no fill for ``stale_after``) is due only every ``stale_every`` rounds.
    """

    leases: WorkLeases
    interval: timedelta
    ttl: timedelta
    batch: int = 10
    stale_after: timedelta = timedelta(hours=6)
    stale_every: int = 10

    @property
    def due_age(self) -> timedelta:
        return self.interval * DUE_FRACTION

    @property
    def stale_due_age(self) -> timedelta:
        return self.interval * (self.stale_every - 1 + DUE_FRACTION)


# Due a little before a full interval has passed: a run that starts a few seconds early
# (scheduler jitter) still finds the sessions of the previous round due.
DUE_FRACTION = 0.9
