"""Kraken's per-pair trading rate counter, as a pure model.

Each pair has a counter that placing and cancelling orders raise and that decays with time.
An action whose cost would lift the counter above the threshold is refused by Kraken with
``EOrder:Rate limit exceeded``. A client that models the counter can wait instead. Starter tier:
threshold 60, decay 1 per second (Intermediate 125 / 2.34, Pro 180 / 3.75), per
https://docs.kraken.com/api/docs/guides/spot-ratelimits/ (the tier table; NautilusTrader's
Kraken adapter and Kraken's own CLI quote the same figures).

Kraken's REST call counter has the same shape (a threshold and a decay per second), per API key:
every private call +1, ledger and trade-history calls +2, AddOrder / CancelOrder (and the other
order calls) nothing, since they have the trading counter. Starter max 15, -0.33/s (one per 3 s);
Intermediate 20, -0.5/s; Pro 20, -1/s; past the max Kraken answers ``EAPI:Rate limit exceeded``
(https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits). :data:`KRAKEN_TIERS` holds both
counters per verification tier.

Costs: AddOrder +1 (each order of a batch +1). Cancelling a young order costs more the younger
it is: +8 under 5 s, +6 under 10 s, +5 under 15 s, +4 under 45 s, +2 under 90 s, +1 under 300 s.
"""

from __future__ import annotations

from dataclasses import dataclass

_CANCEL_PENALTIES = ((5.0, 8), (10.0, 6), (15.0, 5), (45.0, 4), (90.0, 2), (300.0, 1))
# Private endpoints outside the REST call counter (the trading counter charges them instead).
_ORDER_ENDPOINTS = frozenset(
    {"AddOrder", "AddOrderBatch", "AmendOrder", "EditOrder", "CancelOrder", "CancelOrderBatch"}
)
_HISTORY_ENDPOINTS = frozenset({"Ledgers", "QueryLedgers", "TradesHistory", "QueryTrades"})


def rest_cost(endpoint: str) -> int:
    """What a private call to ``endpoint`` adds to Kraken's REST call counter: 0 for order
    calls, 2 for ledger and trade-history calls, else 1."""
    if endpoint in _ORDER_ENDPOINTS:
        return 0
    return 2 if endpoint in _HISTORY_ENDPOINTS else 1


def cancel_penalty(order_age_seconds: float) -> int:
    """What cancelling an order of this age adds to its pair's counter."""
    for younger_than, penalty in _CANCEL_PENALTIES:
        if order_age_seconds < younger_than:
            return penalty
    return 0


@dataclass(frozen=True, slots=True)
class CounterState:
    value: float = 0.0
    at: float = 0.0  # epoch seconds of ``value``


@dataclass(frozen=True, slots=True)
class TradingCounter:
    """The counter's rules: ``threshold`` and ``decay`` per second."""

    threshold: float = 60.0
    decay: float = 1.0

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.decay <= 0:
            raise ValueError("threshold and decay must be positive")

    def current(self, state: CounterState, now: float) -> float:
        """The counter's value at ``now`` after decay."""
        return max(0.0, state.value - max(0.0, now - state.at) * self.decay)

    def wait(self, state: CounterState, now: float, cost: float) -> float:
        """Seconds to wait before an action of ``cost`` fits under the threshold (0 if now).

        Raises ValueError for a cost larger than the threshold: it never fits.
        """
        if cost > self.threshold:
            raise ValueError(f"cost {cost} exceeds the counter threshold {self.threshold}")
        excess = self.current(state, now) + cost - self.threshold
        return max(0.0, excess / self.decay)

    def admit(self, state: CounterState, now: float, cost: float) -> CounterState | None:
        """The new state if an action of ``cost`` is allowed at ``now``, else None."""
        value = self.current(state, now) + cost
        if value > self.threshold:
            return None
        return CounterState(value, now)


@dataclass(frozen=True, slots=True)
class KrakenTier:
    """A Kraken verification tier's two counters: the per-key REST call counter and the
    per-pair trading counter (module docstring)."""

    name: str
    rest: TradingCounter
    trading: TradingCounter


KRAKEN_TIERS: dict[str, KrakenTier] = {
    "starter": KrakenTier("starter", TradingCounter(15.0, 1 / 3), TradingCounter(60.0, 1.0)),
    "intermediate": KrakenTier(
        "intermediate", TradingCounter(20.0, 0.5), TradingCounter(125.0, 2.34)
    ),
    "pro": KrakenTier("pro", TradingCounter(20.0, 1.0), TradingCounter(180.0, 3.75)),
}
