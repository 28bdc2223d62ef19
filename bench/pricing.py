"""Take-profit pricing throughput: 100,000 positions over 10 pairs, JSON to stdout.

Run from the repository root with mmops importable (installed, or ``PYTHONPATH=.``):
``python bench/pricing.py [--positions N] [--seed S]``. Also times the balance allocation of
the resulting quotes, since settlement always runs the two together.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from mmops.domain.allocation import allocate
from mmops.domain.models import Balance, Market, Position, Ticker
from mmops.domain.pricing import TakeProfitQuote, age_in_minutes, price_take_profit
from mmops.domain.tiers import TierPolicy

NOW = datetime(2025, 1, 2, tzinfo=UTC)
# symbol, mid price, tick, lot, min amount: Kraken-like rules
PAIRS = [
    ("BTC/USD", "60000", "0.1", "0.00000001", "0.00005"),
    ("BTC/EUR", "55000", "0.1", "0.00000001", "0.00005"),
    ("ETH/USD", "3000", "0.01", "0.00000001", "0.002"),
    ("ETH/EUR", "2750", "0.01", "0.00000001", "0.002"),
    ("SOL/USD", "150", "0.01", "0.00000001", "0.02"),
    ("XRP/USD", "0.52", "0.00001", "0.00000001", "10"),
    ("ADA/USD", "0.45", "0.000001", "0.00000001", "10"),
    ("DOGE/USD", "0.08", "0.0000001", "0.00000001", "50"),
    ("LTC/USD", "70", "0.01", "0.00000001", "0.05"),
    ("DOT/USD", "6", "0.0001", "0.00000001", "0.5"),
]


def build(count: int, seed: int) -> tuple[list[Position], dict[str, Market], dict[str, Ticker]]:
    rng = random.Random(seed)
    markets, tickers = {}, {}
    for symbol, mid, tick, lot, min_amount in PAIRS:
        base, quote = symbol.split("/")
        markets[symbol] = Market(
            symbol, base, quote, Decimal(tick), Decimal(lot), Decimal(min_amount),
            Decimal("0.5"), Decimal("0.0025"), Decimal("0.004"),
        )  # fmt: skip
        bid = Decimal(mid)
        tickers[symbol] = Ticker(symbol, bid, bid + Decimal(tick), NOW)
    positions = []
    for i in range(count):
        symbol, mid, _, _, min_amount = PAIRS[i % len(PAIRS)]
        price = Decimal(mid) * (1 + Decimal(rng.randint(-300, 300)).scaleb(-4))
        filled = Decimal(min_amount) * rng.randint(1, 400)
        cost = price * filled
        positions.append(
            Position(
                "bench", f"P{i}", symbol, NOW - timedelta(minutes=rng.randint(0, 2000)),
                filled, cost, cost * Decimal("0.0026"),
                covered=filled / 4 if rng.random() < 0.2 else Decimal(0),
            )
        )  # fmt: skip
    return positions, markets, tickers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    positions, markets, tickers = build(args.positions, args.seed)
    policy = TierPolicy()

    start = time.perf_counter()
    results = [
        price_take_profit(
            p,
            age_in_minutes(p.opened_at, NOW),
            markets[p.symbol],
            tickers[p.symbol],
            policy.for_pair(p.symbol),
        )
        for p in positions
    ]
    priced = time.perf_counter() - start
    quotes = [r for r in results if isinstance(r, TakeProfitQuote)]

    # Fund about 60% of each asset's demand, so allocation has to choose.
    demand: dict[str, Decimal] = {}
    for q in quotes:
        base = markets[q.symbol].base
        demand[base] = demand.get(base, Decimal(0)) + q.amount
    balances = {a: Balance(a, d * Decimal("0.6"), Decimal(0), d) for a, d in demand.items()}
    start = time.perf_counter()
    allocation = allocate(quotes, balances, markets)
    allocated = time.perf_counter() - start

    print(
        json.dumps(
            {
                "bench": "pricing",
                "positions": len(positions),
                "pairs": len(markets),
                "quotes": len(quotes),
                "dust": len(results) - len(quotes),
                "pricing_seconds": round(priced, 4),
                "positions_priced_per_second": round(len(positions) / priced),
                "allocation_seconds": round(allocated, 4),
                "quotes_allocated_per_second": round(len(quotes) / allocated)
                if allocated
                else None,
                "granted": len(allocation.granted),
                "insufficient": len(allocation.insufficient),
                "python": platform.python_version(),
            }
        )
    )


if __name__ == "__main__":
    main()
