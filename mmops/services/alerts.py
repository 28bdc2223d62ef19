"""Alert conditions: each one alerts once when it starts and once when it clears.

A condition is a name (``settlement_failed``, ``settlement_stale``, ``migration_failed``,
``exchange_auth``); ``update`` is called after every job with whether it holds now. Only a
change is sent, so an outage of an hour is two messages, not twenty. The notifier never raises.
"""

from __future__ import annotations

from mmops import logs
from mmops.ports import Notifier

log = logs.get_logger("mmops.alerts")


class Alerts:
    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self.active: dict[str, str] = {}  # condition → what started it

    async def update(self, condition: str, holds: bool, detail: str = "") -> None:
        if holds and condition not in self.active:
            self.active[condition] = detail
            log.warning("alert.raised", condition=condition, detail=detail)
            await self._notifier.notify(f"mmops: {condition}", detail or condition, "failure")
        elif not holds and condition in self.active:
            started = self.active.pop(condition)
            log.info("alert.cleared", condition=condition)
            body = f"{condition} cleared" + (f" (it began with: {started})" if started else "")
            await self._notifier.notify(f"mmops: {condition} resolved", body, "success")
