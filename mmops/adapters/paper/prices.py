"""Seeded price paths: the same seed and time always give the same price, in O(1).

A path is the listing's start price times ``exp(volatility · f(t))`` where ``f`` is a sum of
sine waves whose periods (minutes to hours) and phases come from the seed and the symbol. So a
run is reproducible, prices swing both ways (bids fill on dips, take-profits on rises), and any
process can evaluate the price at any time without replaying history.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from decimal import Decimal

from mmops.adapters.paper.catalog import BY_SYMBOL
from mmops.domain.models import Market
from mmops.domain.rounding import round_price_down, round_price_up

_PERIODS_SECONDS = (7 * 3600.0, 2 * 3600.0, 47 * 60.0, 13 * 60.0, 4 * 60.0, 70.0)
_WEIGHTS = (1.0, 0.8, 0.6, 0.45, 0.3, 0.15)
HALF_SPREAD = Decimal("0.0002")  # 2 bps either side of the mid


@dataclass(frozen=True, slots=True)
class Quote:
    bid: Decimal
    ask: Decimal
    mid: Decimal


class PricePath:
    """Mid prices of every catalog pair for one seed.

    ``origin`` (epoch seconds) is the path's time zero: two venues with the same seed and
    origin quote the same prices at the same offset from it, so a run that starts at another
    time of day (the demo, which ends now) still sees the same market.
    """

    def __init__(self, seed: int, volatility: float = 0.012, origin: float = 0.0) -> None:
        self.seed = seed
        self.volatility = volatility
        self.origin = origin
        self._waves: dict[str, tuple[tuple[float, float, float], ...]] = {}

    def _waves_of(self, symbol: str) -> tuple[tuple[float, float, float], ...]:
        waves = self._waves.get(symbol)
        if waves is None:
            rng = random.Random(f"{self.seed}:{symbol}")  # noqa: S311 - simulation, not crypto
            waves = tuple(
                (period * rng.uniform(0.8, 1.25), rng.uniform(0, 2 * math.pi), weight)
                for period, weight in zip(_PERIODS_SECONDS, _WEIGHTS, strict=True)
            )
            self._waves[symbol] = waves
        return waves

    def mid(self, symbol: str, t: float, adjust: Decimal = Decimal(1)) -> Decimal:
        """The mid price at epoch second ``t``, times ``adjust`` (a test's price shock)."""
        listing = BY_SYMBOL[symbol]
        t -= self.origin
        f = sum(w * math.sin(2 * math.pi * t / p + phase) for p, phase, w in self._waves_of(symbol))
        factor = Decimal(repr(math.exp(self.volatility * f / 2.0)))
        return listing.start * factor * adjust

    def quote(self, market: Market, t: float, adjust: Decimal = Decimal(1)) -> Quote:
        """Best bid and ask around the mid, on the tick, at least one tick apart."""
        mid = self.mid(market.symbol, t, adjust)
        bid = max(market.tick, round_price_down(mid * (1 - HALF_SPREAD), market.tick))
        ask = max(bid + market.tick, round_price_up(mid * (1 + HALF_SPREAD), market.tick))
        return Quote(bid=bid, ask=ask, mid=mid)
