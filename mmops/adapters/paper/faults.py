"""Fault injection for the paper venue: latency, failed calls, timeouts after accept, rejects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mmops.errors import (
    ExchangeRejected,
    ExchangeUnavailable,
    InsufficientFunds,
    MinimumNotMet,
    MmopsError,
    PostOnlyWouldTake,
    RateLimited,
)

REJECTIONS: dict[str, type[MmopsError]] = {
    "post_only": PostOnlyWouldTake,
    "insufficient_funds": InsufficientFunds,
    "minimum": MinimumNotMet,
    "rejected": ExchangeRejected,
    "rate_limited": RateLimited,
    "unavailable": ExchangeUnavailable,
}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What to break, counted from 1 per exchange instance.

    ``fail_calls``: API calls (any method) that raise ExchangeUnavailable before doing anything.
    ``timeout_after_accept``: ``place_batch`` calls whose orders are accepted and recorded, then
    reported as ExchangeTimeout (the caller cannot know they were placed).
    ``reject_orders``: order numbers (across batches) refused with the named error.
    ``fail_symbols``: pairs whose every ``place_batch`` raises ExchangeUnavailable.
    ``throttle_calls``: API calls refused as Kraken refuses too many concurrent requests
    (``EService:Throttled``): RateLimited, nothing done.
    """

    latency: float = 0.0  # seconds added to every call
    fail_calls: frozenset[int] = frozenset()
    timeout_after_accept: frozenset[int] = frozenset()
    reject_orders: Mapping[int, str] = field(default_factory=dict)
    fail_symbols: frozenset[str] = frozenset()
    throttle_calls: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.latency < 0:
            raise ValueError("latency must be >= 0")
        unknown = set(self.reject_orders.values()) - set(REJECTIONS)
        if unknown:
            raise ValueError(
                f"unknown rejection kinds {sorted(unknown)}; known: {list(REJECTIONS)}"
            )

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> FaultPlan:
        """Build from settings JSON, e.g. ``{"latency_ms": 50, "timeout_after_accept": [2]}``."""
        known = {
            "latency_ms",
            "fail_calls",
            "timeout_after_accept",
            "reject_orders",
            "fail_symbols",
            "throttle_calls",
        }
        if unknown := set(data) - known:
            raise ValueError(f"unknown fault settings {sorted(unknown)}; known: {sorted(known)}")
        return FaultPlan(
            latency=float(data.get("latency_ms", 0)) / 1000,
            fail_calls=frozenset(int(n) for n in data.get("fail_calls", ())),
            timeout_after_accept=frozenset(int(n) for n in data.get("timeout_after_accept", ())),
            reject_orders={int(k): str(v) for k, v in dict(data.get("reject_orders", {})).items()},
            fail_symbols=frozenset(str(s) for s in data.get("fail_symbols", ())),
            throttle_calls=frozenset(int(n) for n in data.get("throttle_calls", ())),
        )

    def rejection(self, order_number: int, message: str) -> MmopsError | None:
        kind = self.reject_orders.get(order_number)
        return None if kind is None else REJECTIONS[kind](f"{message} (injected fault)")
