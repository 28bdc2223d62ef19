"""Settling a new fill within a second: the settle trigger.

Every new buy fill is announced on ``FillEvents`` (by whoever recorded it: the fill feed, the
ingest entry or the paper loop). The trigger reads those events and, per session, waits a
short debounce so a burst of fills makes one run, then settles just the pairs that filled,
under the same session lock and fenced protocol as the scheduled run. Events are
acknowledged only once their run finished; a run refused because another holds the session's
lock (a scheduled run, another worker) is tried again shortly, so a fill that lands during a
long run is not left to the next interval. The schedule stays the safety net.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from mmops import logs
from mmops.domain.records import FillEvent, RunState
from mmops.errors import RECOVERABLE, ConfigurationError, StoreUnavailable, UnknownSession
from mmops.ports import FillEvents
from mmops.services.stopping import sleep_or_stop

log = logs.get_logger("mmops.trigger")

# Settles one session's pairs; returns the run's state per session settled (the run may
# settle nothing when the session has none of those pairs).
Settle = Callable[[str, Sequence[str]], Awaitable[list[RunState]]]


@dataclass(slots=True)
class _Due:
    pairs: set[str] = field(default_factory=set)
    event_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class TriggerStats:
    events: int = 0
    runs: int = 0
    retried: int = 0
    given_up: int = 0


class SettleTrigger:
    def __init__(
        self,
        events: FillEvents,
        settle: Settle,
        *,
        consumer: str,
        debounce: float = 0.2,
        retry_every: float = 0.25,
        retry_max: float = 4.0,
        give_up_after: float = 25.0,
        block_ms: int = 500,
    ) -> None:
        self._events = events
        self._settle = settle
        self._consumer = consumer
        self._debounce = debounce
        self._retry_every = retry_every
        self._retry_max = retry_max
        # Below the events' claim time (30 s), so another worker does not take them meanwhile.
        self._give_up_after = give_up_after
        self._block_ms = block_ms
        self._due: dict[str, _Due] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = False
        self.stats = TriggerStats()

    async def run(self, stop: asyncio.Event) -> None:
        """Read events until ``stop`` is set, then let the runs under way finish (without
        retrying: what is left unacknowledged is delivered again later). Cancelled, it
        cancels those runs too."""
        try:
            await self._read_until(stop)
            self._stopping = True
            await self.drain()
        finally:
            for task in list(self._running.values()):
                task.cancel()

    async def _read_until(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        while not stop.is_set():
            try:
                events = await self._events.read(self._consumer, self._block_ms, 500)
            except StoreUnavailable as e:
                log.warning("trigger.read_failed", error=str(e), retry_in=backoff)
                await sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            backoff = 0.5
            for event in events:
                self.add(event)

    def add(self, event: FillEvent) -> None:
        """Queue an event's (session, pair); starts the session's debounced run if none is."""
        self.stats.events += 1
        due = self._due.setdefault(event.session_id, _Due())
        due.pairs.add(event.symbol)
        due.event_ids.append(event.event_id)
        if event.session_id not in self._running:
            task = asyncio.create_task(self._settle_session(event.session_id))
            self._running[event.session_id] = task

    async def drain(self) -> None:
        """Wait for every run under way (and what is queued behind it)."""
        while self._running:
            await asyncio.gather(*list(self._running.values()), return_exceptions=True)

    async def _settle_session(self, session_id: str) -> None:
        try:
            await self._settle_due(session_id)
        except Exception as e:  # a bug or an error no run handles: logged, events left
            # unacknowledged (claimed again after the claim time) and never lost silently
            log.error("trigger.crashed", session=session_id, error=f"{type(e).__name__}: {e}")
            self._due.pop(session_id, None)
        finally:  # at once, with no await between the last check of _due and this
            self._running.pop(session_id, None)

    async def _settle_due(self, session_id: str) -> None:
        waited = 0.0
        pause = self._retry_every
        await asyncio.sleep(self._debounce)
        while session_id in self._due:
            due = self._due.pop(session_id)
            try:
                state = await self._run(session_id, sorted(due.pairs))
            except BaseException:
                self._merge(session_id, due)  # whatever was taken goes back before raising
                raise
            if state is not RunState.LOCKED:
                await self._ack(due.event_ids)
                waited, pause = 0.0, self._retry_every
                continue
            if self._stopping:  # left unacknowledged: delivered again after the restart
                return
            if waited >= self._give_up_after:  # the scheduled run will cover them
                self.stats.given_up += 1
                log.warning("trigger.gave_up", session=session_id, pairs=sorted(due.pairs))
                await self._ack(due.event_ids)
                continue
            self.stats.retried += 1
            self._merge(session_id, due)
            # Backing off: each try reads the venue (balances, tickers) before the lock.
            await asyncio.sleep(pause)
            waited += pause
            pause = min(pause * 2, self._retry_max)

    def _merge(self, session_id: str, due: _Due) -> None:
        again = self._due.setdefault(session_id, _Due())
        again.pairs |= due.pairs
        again.event_ids[:0] = due.event_ids

    async def _run(self, session_id: str, pairs: list[str]) -> RunState | None:
        """The run's state (LOCKED: try again), or None when there is nothing to retry."""
        self.stats.runs += 1
        try:
            states = await self._settle(session_id, pairs)
        except (UnknownSession, ConfigurationError) as e:
            log.warning("trigger.unknown_session", session=session_id, error=str(e))
            return None
        except StoreUnavailable as e:
            log.warning("trigger.store_down", session=session_id, error=str(e))
            return RunState.LOCKED  # not settled: try again shortly, like a held lock
        except RECOVERABLE as e:
            log.error("trigger.failed", session=session_id, error=str(e))
            return None
        log.info("trigger.settled", session=session_id, pairs=pairs,
                 states=[s.value for s in states])  # fmt: skip
        return RunState.LOCKED if RunState.LOCKED in states else None

    async def _ack(self, event_ids: list[str]) -> None:
        try:
            await self._events.ack(event_ids)
        except StoreUnavailable as e:  # unacknowledged events are delivered again: harmless
            log.warning("trigger.ack_failed", error=str(e))
