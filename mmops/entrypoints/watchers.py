"""The exchange-truth loops of one process (``mmops watch``, and inside ``mmops serve``): the
fill feed (the account's executions), the ingest consumer (a user's own market maker) and the
settle trigger (a new buy fill settles its pair within a second).

Each loop handles its own temporary failures; one that crashes on something unexpected is
logged and started again after a pause, so it never takes the others or the process down.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mmops import logs
from mmops.bootstrap import Runtime, build_feed, build_ingest, build_trigger, open_feed, worker_name
from mmops.errors import ConfigurationError
from mmops.ports import Exchange
from mmops.services.feed import FeedService
from mmops.services.ingest import IngestService
from mmops.services.settlement import SessionResult, SettlementService
from mmops.services.stopping import sleep_or_stop
from mmops.services.trigger import SettleTrigger

log = logs.get_logger("mmops.watch")

RESTART_AFTER = 2.0  # seconds before a crashed loop starts again
# Seconds the loops get to wind down once stopped; then they are cancelled, which loses
# nothing: an unacknowledged event or message is delivered again, the cursor moves only
# after what it covers is recorded, and a settlement run releases its locks on the way out.
STOP_GRACE = 5.0


@dataclass(slots=True)
class Watchers:
    feed: FeedService | None
    ingest: IngestService | None
    trigger: SettleTrigger | None
    consumer: str
    crashes: dict[str, int] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        """Run every loop until ``stop`` is set and each has wound down."""
        loops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        if self.feed is not None:
            feed = self.feed
            loops.append(("feed", lambda: feed.run(stop)))
        if self.ingest is not None:
            ingest = self.ingest
            loops.append(("ingest", lambda: ingest.run(self.consumer, stop)))
        if self.trigger is not None:
            trigger = self.trigger
            loops.append(("trigger", lambda: trigger.run(stop)))
        await asyncio.gather(*(self._keep(name, loop, stop) for name, loop in loops))

    async def _keep(
        self, name: str, loop: Callable[[], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        while not stop.is_set():
            try:
                await loop()
            except Exception as e:  # a loop never takes the others down: logged, restarted
                self.crashes[name] = self.crashes.get(name, 0) + 1
                log.error("watch.loop_crashed", loop=name,
                          error=logs.scrub(f"{type(e).__name__}: {e}"))  # fmt: skip
                await sleep_or_stop(stop, RESTART_AFTER)

    async def stopped(self, running: asyncio.Task[None]) -> None:
        """Wait for ``running`` (this object's ``run``, already told to stop) at most
        STOP_GRACE seconds, then cancel it: a loop may be blocked on a store that is down."""
        _, late = await asyncio.wait([running], timeout=STOP_GRACE)
        for task in late:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def stats(self) -> dict[str, Any]:
        return {
            "feed": self.feed.counts.to_dict() if self.feed else None,
            "ingest": self.ingest.totals.to_dict() if self.ingest else None,
            "trigger": vars_of(self.trigger.stats) if self.trigger else None,
            "crashes": dict(self.crashes),
        }


def vars_of(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


@contextlib.asynccontextmanager
async def open_watchers(
    rt: Runtime,
    exchange: Exchange,
    settlement: SettlementService,
    *,
    feed: bool,
    ingest: bool = True,
    trigger: bool = True,
    observe: Callable[[list[SessionResult]], None] | None = None,
) -> AsyncIterator[Watchers]:
    """The loops this process runs, their feed open for the length of the block."""
    async with contextlib.AsyncExitStack() as stack:
        feed_service = None
        if feed:
            try:
                execution_feed = await stack.enter_async_context(open_feed(rt, exchange))
            except ConfigurationError as e:  # a venue with no feed: the rest still runs
                log.warning("feed.unsupported", error=str(e))
            else:
                feed_service = build_feed(rt, exchange, execution_feed)
        yield Watchers(
            feed=feed_service,
            ingest=build_ingest(rt) if ingest else None,
            trigger=build_trigger(rt, settlement, observe)
            if trigger and rt.settings.settle_debounce > 0
            else None,
            consumer=worker_name(rt.settings),
        )
