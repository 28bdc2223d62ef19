"""Structured logging (structlog): events with fields, and a scrubber so secrets never print.

:func:`configure` is called once by the composition root. Every configured secret value is
registered with the scrubber, which replaces it in every string field of every event, whatever
the level, so a URL or an exception text that happens to carry a password prints ``***``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

_secrets: set[str] = set()


def register_secrets(values: Iterable[str]) -> None:
    """Add values that must never appear in a log line (ignores empty and very short ones)."""
    _secrets.update(v for v in values if len(v) >= 4)


def scrub(text: str) -> str:
    """Replace every registered secret in ``text`` by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _scrub_event(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if not _secrets:
        return event
    for key, value in event.items():
        if isinstance(value, str):
            event[key] = scrub(value)
        elif not isinstance(value, int | float | bool) and value is not None:
            event[key] = scrub(str(value))
    return event


def configure(level: str = "INFO", fmt: str = "console", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger to write one line per event to stderr."""
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    out = stream if stream is not None else sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
