"""Alerts through apprise (Slack, Discord, Telegram, e-mail, webhooks…).

A failing channel is logged and swallowed: an alert must never break the job that raised it.
URLs may carry tokens, so they are registered as secrets and never logged. apprise is imported
only where alert URLs are set: importing it costs about a tenth of a CPU second, which every
``mmops`` command (and each of the test suite's few hundred) would otherwise pay.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from mmops import logs

if TYPE_CHECKING:
    import apprise

log = logs.get_logger("mmops.notify")

_TYPES = {"info": "info", "success": "success", "warning": "warning", "failure": "failure"}


@contextlib.contextmanager
def _plugins_loading() -> Iterator[None]:
    """Apprise loads its plugins on the first URL; one imports imghdr, deprecated in 3.11."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def unparsable(urls: Sequence[str]) -> list[int]:
    """Positions of the URLs apprise cannot use (an unknown scheme, a malformed token)."""
    import apprise

    with _plugins_loading():
        return [n for n, url in enumerate(urls) if not apprise.Apprise().add(url)]


class AppriseNotifier:
    def __init__(self, urls: Sequence[str]) -> None:
        self._apprise: apprise.Apprise | None = None
        if urls:
            import apprise

            self._apprise = apprise.Apprise()
            with _plugins_loading():
                for n, url in enumerate(urls):
                    if not self._apprise.add(url):
                        log.error("alert.bad_url", index=n)
        self.enabled = self._apprise is not None and len(self._apprise) > 0

    async def notify(self, title: str, body: str, level: str = "warning") -> None:
        log.warning("alert", title=title, body=body, level=level)
        if self._apprise is None or not self.enabled:
            return
        try:
            delivered = await self._apprise.async_notify(
                body=body, title=title, notify_type=_TYPES.get(level, "warning")
            )
        except Exception as e:  # any channel failure is logged, never raised
            log.error("alert.failed", error=f"{type(e).__name__}: {logs.scrub(str(e))}")
            return
        if not delivered:
            log.error("alert.failed", error="a channel did not accept the alert")
