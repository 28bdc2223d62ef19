"""The paper venue's executions through the same ``ExecutionFeed`` port as a live venue's.

The venue keeps the account's trades in one Redis list, appended in order as it matches, so
the list index is the cursor: the history is the list from the cursor on, and the stream
follows the list's end, polling every ``poll`` seconds (a live venue pushes; the paper venue
is matched by whoever drives its clock, in any process). ``drop()`` ends the stream as a lost
connection would, so the gap-fill path is exercised on paper too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime

from mmops.adapters.paper.exchange import PaperExchange
from mmops.domain.exchange import Trade
from mmops.errors import FeedDisconnected


class PaperFeed:
    def __init__(self, venue: PaperExchange, *, poll: float = 0.05) -> None:
        self._venue = venue
        self._poll = poll
        self._dropped = 0
        self.account = f"paper:{venue.venue}"

    async def history(self, cursor: str | None, since: datetime) -> tuple[list[Trade], str]:
        """Trades after ``cursor`` (a list index); with none, all of them: the paper venue's
        list is its whole history (``since`` is for venues that keep years). A cursor past
        the list's end means the venue was reset: its trades are read anew. Reading some
        twice is harmless (trade ids)."""
        start = _index(cursor)
        if start > await self._venue.trade_count():
            start = 0
        trades, after = await self._venue.trades(start)
        return trades, str(after)

    async def stream(self) -> AsyncIterator[list[Trade]]:
        """New trades as the venue matches them, from the list's end at the first read."""
        dropped = self._dropped
        index = await self._venue.trade_count()
        while True:
            if self._dropped != dropped:
                raise FeedDisconnected("paper feed dropped")
            trades, index = await self._venue.trades(index)
            if trades:
                yield trades
            await asyncio.sleep(self._poll)

    def drop(self) -> None:
        """End every open stream with FeedDisconnected (as a dropped connection would)."""
        self._dropped += 1

    async def close(self) -> None:
        return None


def _index(cursor: str | None) -> int:
    if cursor is None:
        return 0
    try:
        return max(0, int(cursor))
    except ValueError:  # another feed's cursor under this account: read everything again
        return 0
